"""Qwen3: per-head RMSNorm on queries and keys before RoPE."""

import torch
from torch import nn

from spts.adapters.base import DecoderAdapter, apply_rope


class Qwen3Adapter(DecoderAdapter):
    model_types = ("qwen3",)

    def queries(self, layer: nn.Module, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        attn = layer.self_attn
        q = attn.q_norm(self._heads(attn.q_proj(normed))).transpose(1, 2)
        return apply_rope(q, cos, sin)

    def keys(self, layer: nn.Module, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        attn = layer.self_attn
        k = attn.k_norm(self._heads(attn.k_proj(normed))).transpose(1, 2)
        return apply_rope(k, cos, sin)
