"""What the runtime needs to know about a decoder family: where its parts live and how q/k/v are made.

An adapter never runs a whole layer; it exposes the layer's parts by role (norms, q/k/v/o
projections with their family-specific extras such as Qwen3's q/k norms, rotary, MLP) so that
the runtime can run those parts on a subset of tokens. A new family whose layers follow the
LLaMA layout needs only a subclass that names its ``model_type``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x`` (B, heads, n, d) with ``cos``/``sin`` (B, n, d) of the tokens' own positions.

    Same operations in the same order as transformers' ``apply_rotary_pos_emb``, so that a
    full-budget run reproduces the unmodified model bit for bit.
    """
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return (x * cos) + (rotate_half(x) * sin)


class DecoderAdapter:
    """LLaMA-layout decoder: ``model.model.layers[i]`` with ``input_layernorm``, ``self_attn``
    (``q_proj``/``k_proj``/``v_proj``/``o_proj``), ``post_attention_layernorm`` and ``mlp``."""

    model_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config
        self.num_heads: int = self.config.num_attention_heads
        self.num_kv_heads: int = getattr(self.config, "num_key_value_heads", None) or self.num_heads
        self.head_dim: int = getattr(self.config, "head_dim", None) or (self.config.hidden_size // self.num_heads)

    # ---------------------------------------------------------------- structure
    def decoder(self) -> nn.Module:
        """The module that owns the layer loop (``LlamaModel`` inside ``LlamaForCausalLM``)."""
        inner = getattr(self.model, "model", None)
        return inner if inner is not None and hasattr(inner, "layers") else self.model

    def layers(self) -> nn.ModuleList:
        return self.decoder().layers

    def rotary(self) -> nn.Module:
        """The rotary embedding: called with (tensor, position_ids), returns (cos, sin)."""
        return self.decoder().rotary_emb

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """The norm after the last layer, before the LM head."""
        return self.decoder().norm(hidden)

    def sliding_window(self, layer_idx: int) -> int | None:
        """The attention window of a layer, or None when it attends to the whole prefix."""
        layer_types = getattr(self.config, "layer_types", None)
        window = getattr(self.config, "sliding_window", None)
        if layer_types is not None:
            return window if layer_types[layer_idx] == "sliding_attention" else None
        return window

    # ---------------------------------------------------------------- attention parts
    def attention(self, layer: nn.Module) -> nn.Module:
        return layer.self_attn

    def input_norm(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return layer.input_layernorm(hidden)

    def post_attention_norm(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return layer.post_attention_layernorm(hidden)

    def _heads(self, projected: torch.Tensor) -> torch.Tensor:
        """(B, n, heads*d) -> (B, n, heads, d)."""
        return projected.view(*projected.shape[:-1], -1, self.head_dim)

    def queries(self, layer: nn.Module, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotated queries (B, heads, n, d) for normed hidden states (B, n, D)."""
        q = self._heads(layer.self_attn.q_proj(normed)).transpose(1, 2)
        return apply_rope(q, cos, sin)

    def keys(self, layer: nn.Module, normed: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotated keys (B, kv_heads, n, d)."""
        k = self._heads(layer.self_attn.k_proj(normed)).transpose(1, 2)
        return apply_rope(k, cos, sin)

    def values(self, layer: nn.Module, normed: torch.Tensor) -> torch.Tensor:
        """Values (B, kv_heads, n, d)."""
        return self._heads(layer.self_attn.v_proj(normed)).transpose(1, 2)

    def attention_output(self, layer: nn.Module, attn: torch.Tensor) -> torch.Tensor:
        """Output projection of the attention result (B, n, heads, d) -> (B, n, D)."""
        return layer.self_attn.o_proj(attn.reshape(*attn.shape[:2], -1).contiguous())

    # ---------------------------------------------------------------- FFN
    def mlp(self, layer: nn.Module) -> nn.Module:
        return layer.mlp

    def ffn(self, layer: nn.Module, normed: torch.Tensor) -> torch.Tensor:
        return layer.mlp(normed)
