"""Tiny random models of every supported family, built locally (no hub), and helpers shared by tests."""

from __future__ import annotations

import importlib

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
ATTENTION = ("sdpa", "eager")

_COMMON = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    # Larger than the default 0.02 so attention is far from uniform and selections are meaningful.
    initializer_range=0.15,
    tie_word_embeddings=False,
)


def tiny_model(family: str, attn: str = "sdpa", seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = {**_COMMON, **overrides}
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**kwargs))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**kwargs))
    elif family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(head_dim=16, **kwargs))
    elif family == "mistral":
        model = MistralForCausalLM(MistralConfig(sliding_window=None, **kwargs))
    else:
        raise ValueError(family)
    model.config._attn_implementation = attn
    return model.eval()


def family_module(model: torch.nn.Module):
    """The transformers modeling module of ``model`` (its own rotary helper, etc.)."""
    return importlib.import_module(type(model).__module__)


def pytest_report_header(config) -> str:
    import transformers

    return f"spts tested against transformers {transformers.__version__}, torch {torch.__version__}"


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture
def one_thread():
    """One torch thread: on a shared, busy CPU a second thread makes every op on small tensors wait at a barrier
    for a time slice (the SmolLM2 tune takes ~25 s with one thread and ~80 s with two there)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def uninstalled_zoo_entry(name: str = "fake", sha256_prefix: str = ""):
    """A zoo entry whose one package (``spts-no-such-dist-xyz==1.0``) is installed nowhere."""
    from spts import zoo

    return zoo.ZooEntry(
        name=name,
        description="not installed anywhere",
        packages=("spts-no-such-dist-xyz==1.0",),
        parts=(zoo.ZooPart("spts-no-such-dist-xyz", "x/m.gguf"),),
        gguf_name="m.gguf",
        architecture="llama",
        num_layers=2,
        chat=False,
        sha256_prefix=sha256_prefix,
    )
