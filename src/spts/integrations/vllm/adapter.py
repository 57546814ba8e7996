"""The parts of a vLLM decoder layer by role, in the shape ``spts.runtime.prefill.skipping_prefill`` expects.

``skipping_prefill`` (the HF runtime's layer pass) is reused unchanged: it calls an adapter for norms, q/k/v,
output projection and FFN on (1, n, D) rows of one request, so the vLLM path selects, prunes and computes exactly
what the HF path does. vLLM fuses q/k/v into one ``qkv_proj`` and, on CPU, replaces its weight by a packed handle
once loading ends; SPTS needs keys for every candidate but queries and values only for active tokens, so
``keep_projection_weights`` copies the q/k/v slices of each skipping layer before that happens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from spts.adapters.base import apply_rope


class ProjectionWeights(nn.Module):
    """Separate q/k/v weights (and biases) of one skipping layer, kept beside vLLM's fused, packed ``qkv_proj``."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        qkv = attention.qkv_proj
        q_size, kv_size = attention.q_size, attention.kv_size
        bounds = {"q": (0, q_size), "k": (q_size, q_size + kv_size), "v": (q_size + kv_size, q_size + 2 * kv_size)}
        bias = getattr(qkv, "bias", None)
        for name, (start, stop) in bounds.items():
            self.register_buffer(f"{name}_weight", qkv.weight.detach()[start:stop].clone(), persistent=False)
            part = None if bias is None else bias.detach()[start:stop].clone()
            self.register_buffer(f"{name}_bias", part, persistent=False)

    def project(self, name: str, x: torch.Tensor) -> torch.Tensor:
        weight, bias = getattr(self, f"{name}_weight"), getattr(self, f"{name}_bias")
        return F.linear(x, weight, None if bias is None else bias.to(x.dtype))


def keep_projection_weights(layer: nn.Module) -> None:
    """Copy ``layer``'s q/k/v weights out of its fused projection (call after loading, before vLLM packs them)."""
    layer.spts_projections = ProjectionWeights(layer.self_attn)


def _flat(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run a vLLM module that takes (tokens, features) on (B, n, features) rows."""
    out = module(x.reshape(-1, x.shape[-1]))
    if isinstance(out, tuple):  # vLLM's linear layers return (output, bias)
        out = out[0]
    return out.view(*x.shape[:-1], out.shape[-1])


class VLLMAdapter:
    """A ``DecoderAdapter`` for vLLM's LLaMA/Qwen2/Qwen3 decoder layers (tensor parallel size 1)."""

    def __init__(self, head_dim: int, qk_norm: bool = False) -> None:
        self.head_dim = head_dim
        self.qk_norm = qk_norm

    def attention(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn  # has ``scaling``, as the HF attention modules do

    def input_norm(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return _flat(layer.input_layernorm, hidden)

    def post_attention_norm(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return _flat(layer.post_attention_layernorm, hidden)

    def _heads(self, layer: nn.Module, name: str, normed: torch.Tensor) -> torch.Tensor:
        projected = layer.spts_projections.project(name, normed)
        heads = projected.view(*projected.shape[:-1], -1, self.head_dim)  # (B, n, heads, d)
        if self.qk_norm and name in ("q", "k"):
            norm = layer.self_attn.q_norm if name == "q" else layer.self_attn.k_norm
            heads = norm(heads.reshape(-1, self.head_dim)).view(heads.shape)
        return heads.transpose(1, 2)

    def queries(self, layer: nn.Module, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_rope(self._heads(layer, "q", normed), cos, sin)

    def keys(self, layer: nn.Module, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_rope(self._heads(layer, "k", normed), cos, sin)

    def values(self, layer: nn.Module, normed: torch.Tensor) -> torch.Tensor:
        return self._heads(layer, "v", normed)

    def attention_output(self, layer: nn.Module, attn: torch.Tensor) -> torch.Tensor:
        return _flat(layer.self_attn.o_proj, attn.reshape(*attn.shape[:2], -1).contiguous())

    def ffn(self, layer: nn.Module, normed: torch.Tensor) -> torch.Tensor:
        return _flat(layer.mlp, normed)


def rotary_tables(rotary: nn.Module, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (1, n, head_dim), of vLLM's rotary embedding at ``positions``, in HF's neox layout.

    vLLM caches ``cat(cos, sin)`` over half the rotary dimension; HF's ``apply_rotary_pos_emb`` (which
    ``apply_rope`` mirrors) takes both halves repeated."""
    cos_sin = rotary.cos_sin_cache.index_select(0, positions).to(dtype)
    cos, sin = cos_sin.chunk(2, dim=-1)
    return torch.cat((cos, cos), dim=-1)[None], torch.cat((sin, sin), dim=-1)[None]


def sdpa_attention(
    module: nn.Module,
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
) -> tuple[torch.Tensor, None]:
    """Attention with the HF attention-function signature: (B, heads, n, d) queries over (B, kv_heads, m, d) keys.

    No mask means causal among the given tokens (what ``skipping_prefill`` asks for outside ``kv_complete``)."""
    out = F.scaled_dot_product_attention(
        queries,
        keys,
        values,
        attn_mask=mask,
        is_causal=mask is None and queries.shape[2] > 1,
        scale=scaling,
        enable_gqa=keys.shape[1] != queries.shape[1],
    )
    return out.transpose(1, 2), None
