"""Integrations of SPTS into serving engines (optional extras: ``spts[vllm]``)."""
