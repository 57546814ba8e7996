"""SPTS prefill inside vLLM's engine (``pip install spts[vllm]``; see docs/vllm.md).

``register`` is the ``vllm.general_plugins`` entry point: vLLM calls it in every process it starts. It replaces
vLLM's LLaMA, Qwen2 and Qwen3 classes by subclasses that behave exactly like them unless the deployment turns SPTS
on (``additional_config={"spts": {...}}`` or ``$SPTS_VLLM_CONFIG``). Nothing here imports vLLM at import time.
"""

from __future__ import annotations

_CLASSES = {
    "LlamaForCausalLM": "SPTSLlamaForCausalLM",
    "Qwen2ForCausalLM": "SPTSQwen2ForCausalLM",
    "Qwen3ForCausalLM": "SPTSQwen3ForCausalLM",
}


def register() -> None:
    """Register the SPTS model classes with vLLM (idempotent; vLLM may call it more than once per process)."""
    from vllm import ModelRegistry

    for architecture, cls in _CLASSES.items():
        ModelRegistry.register_model(architecture, f"spts.integrations.vllm.models:{cls}")


__all__ = ["register"]
