"""Prompt and data builders for demos, benchmarks and tests (no network access needed).

:mod:`spts.data.corpora` supplies the haystack text (Paul Graham's essays or synthetic filler);
:mod:`spts.data.haystack` builds needle-in-a-haystack prompts from it.
"""
