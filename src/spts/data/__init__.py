"""Prompt and data builders for demos, benchmarks and tests (no network access needed)."""
