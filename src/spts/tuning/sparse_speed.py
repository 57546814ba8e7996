"""Block-sparse attention (``SPTSConfig.sparse_*``) in ``spts tune``'s speed model.

Its speed depends on the prompt: a layer computes the share of key blocks its estimate keeps. The speed model
therefore takes the density of each sparse layer as measured on a calibration prompt (one prefill per distinct
sparse setting of the search space, every layer sparse, none falling back), and times on this machine what a sparse
layer pays instead of the dense attention call: the estimate with its block selection, and the kernel per unit of
density (timed on a random selection, divided by its density). What is approximated: a skipping layer's sparse
attention among its active tokens is predicted at the density its layer had over the whole prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from spts.adapters import adapter_for
from spts.config import SPTSConfig
from spts.policies.sparse import antidiagonal_block_mass, density, kept_counts, rank_blocks, round_up_counts
from spts.runtime.engine import enabled, last_stats
from spts.runtime.sparse_attention import MIN_BLOCKS
from spts.runtime.sparse_kernels import block_sparse_attention, default_kernel

SPARSE_PARTS = ("sparse_estimate", "sparse_kernel", "dense_core")
REFERENCE_DENSITY = 0.25
"""Density of the random selection the kernel is timed on."""


SparseSetting = tuple[int, float, float, int, bool]


def sparse_setting(config: SPTSConfig) -> SparseSetting | None:
    """What decides a sparse layer's density over a prompt (block, threshold, minimum density, question tokens,
    per head); None: no sparse layer."""
    if config.sparse_from is None:
        return None
    return (
        config.sparse_block, config.sparse_threshold, config.sparse_min_density, config.sparse_query_tokens,
        config.sparse_per_head,
    )  # fmt: skip


def measure_densities(
    model: nn.Module, configs: Iterable[SPTSConfig], input_ids: torch.Tensor
) -> dict[SparseSetting, dict[int, float]]:
    """Per distinct sparse setting among ``configs``: the density of every layer on ``input_ids`` (one prefill of
    the model with every layer sparse and no dense fallback)."""
    num_layers = model.config.num_hidden_layers
    out: dict[SparseSetting, dict[int, float]] = {}
    for setting in sorted({s for c in configs if (s := sparse_setting(c)) is not None}):
        block, threshold, minimum, question, per_head = setting
        probe = SPTSConfig(
            num_layers - 1, (), (1.0,), skip_attention=False, skip_ffn=False, prune=False, sparse_from=0,
            sparse_to=num_layers, sparse_block=block, sparse_threshold=threshold, sparse_min_density=minimum,
            sparse_max_density=1.0, sparse_query_tokens=question, sparse_per_head=per_head,
        )  # fmt: skip
        with torch.inference_mode(), enabled(model, probe):
            model(input_ids, use_cache=True, logits_to_keep=1)
            out[setting] = {i: s.kept_density for i, s in last_stats(model).sparse.items()}
    return out


def densities_for(
    config: SPTSConfig, measured: Mapping[SparseSetting, Mapping[int, float]]
) -> Mapping[int, float] | None:
    setting = sparse_setting(config)
    return None if setting is None else measured.get(setting)


def sparse_part_calls(
    model: nn.Module, n: int, block: int, generator: torch.Generator
) -> list[tuple[str, Callable[[], Any], float]]:
    """(part, callable, factor) for the last layer's attention over ``n`` tokens: the dense attention call, the
    estimate and selection, and the kernel on a random selection (factor: 1 / its density). None below the length
    at which layers estimate."""
    if -(-n // block) < MIN_BLOCKS:
        return []
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.llama.modeling_llama import eager_attention_forward

    adapter = adapter_for(model)
    attention = adapter.attention(adapter.layers()[-1])
    parameter = next(model.parameters())
    heads, kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    dim = getattr(attention, "head_dim", model.config.hidden_size // heads)
    query = torch.randn(1, heads, n, dim, generator=generator).to(parameter.device, parameter.dtype)
    key, value = (torch.randn(1, kv_heads, n, dim, generator=generator).to(query) for _ in range(2))
    implementation = model.config._attn_implementation
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
    mask = None
    if implementation == "eager":
        blocked = torch.ones(n, n, dtype=torch.bool, device=query.device).triu(1)
        mask = torch.zeros(n, n, dtype=query.dtype, device=query.device).masked_fill(blocked, -torch.inf)[None, None]
    scaling = attention.scaling
    random_mass = torch.rand(1, kv_heads, -(-n // block), -(-n // block), generator=generator).to(query.device)
    order = rank_blocks(random_mass)
    counts = round_up_counts(kept_counts(random_mass, order, 1e-6, REFERENCE_DENSITY))
    kernel = default_kernel(query.device)

    def estimate() -> Any:
        mass = antidiagonal_block_mass(query, key, block, scaling)
        ranked = rank_blocks(mass)
        return round_up_counts(kept_counts(mass, ranked, 0.9, 0.0))

    return [
        ("dense_core", lambda: attend(attention, query, key, value, mask, dropout=0.0, scaling=scaling), 1.0),
        ("sparse_estimate", estimate, 1.0),
        (
            "sparse_kernel",
            lambda: block_sparse_attention(kernel, query, key, value, order, counts, block, scaling),
            1.0 / density(counts),
        ),
    ]
