"""PAP: how much each candidate token matters to the last token's attention."""

from __future__ import annotations

import functools

import torch

HEAD_AGGREGATIONS = ("mean", "max")


def attention_probe_scores(
    probe_queries: torch.Tensor,
    keys: torch.Tensor,
    scaling: float,
    probe_offsets: torch.Tensor | None = None,
    head_aggregation: str = "mean",
) -> torch.Tensor:
    """Attention probability that the probe queries give each key, aggregated over heads.

    Args:
        probe_queries: (B, heads, P, d) rotated queries of the probe tokens (the last P candidates).
        keys: (B, kv_heads, C, d) rotated keys of every candidate.
        scaling: the attention's softmax scale (``1/sqrt(d)`` for these families).
        probe_offsets: (P,) candidate index of each probe token; when given, a probe token only sees
            candidates up to itself (causality). None for a single probe token, which sees all.
        head_aggregation: ``"mean"`` over query heads (the paper) or ``"max"``: a token one head
            retrieves strongly keeps its score even when the other heads ignore it.

    Returns:
        (B, C) float32 scores: softmax over candidates per head and probe token, averaged over probe
        tokens and aggregated over query heads. Under GQA each query head scores against its own KV group.
    """
    if head_aggregation not in HEAD_AGGREGATIONS:
        raise ValueError(f"head_aggregation must be one of {HEAD_AGGREGATIONS}, got {head_aggregation!r}")
    batch, heads, n_probe, dim = probe_queries.shape
    kv_heads, n_keys = keys.shape[1], keys.shape[2]
    group = heads // kv_heads
    # (B, kv, group*P, d) @ (B, kv, d, C): each KV head serves its group without repeating keys.
    # In float32, scaled first: bf16 logits would be rounded by ~0.1 near 25, enough to reorder the
    # tokens around the top-M cut, and fp16 products could overflow.
    grouped = probe_queries.reshape(batch, kv_heads, group * n_probe, dim).float() * scaling
    logits = torch.matmul(grouped, keys.float().transpose(-1, -2))
    if probe_offsets is not None:
        visible = torch.arange(n_keys, device=keys.device)[None, :] <= probe_offsets[:, None]  # (P, C)
        logits = logits.masked_fill(~visible.repeat(group, 1), float("-inf"))
    probabilities = logits.softmax(dim=-1)
    if head_aggregation == "mean":
        return probabilities.mean(dim=(1, 2))
    return probabilities.view(batch, heads, n_probe, n_keys).mean(dim=2).amax(dim=1)


def pool_scores(scores: torch.Tensor, kernel: int) -> torch.Tensor:
    """Max-pool (B, C) scores over neighbouring candidates, so a token inherits its neighbours' importance."""
    return torch.nn.functional.max_pool1d(scores[:, None], kernel, stride=1, padding=kernel // 2)[:, 0]


def layer_inputs(model, input_ids: torch.Tensor, layer_indices) -> dict[int, tuple[torch.Tensor, tuple]]:
    """What the unmodified ``model`` gives each layer of ``layer_indices`` on ``input_ids``: its hidden states and
    position embeddings, for :func:`probe_layer_input` in analysis scripts (one forward, no cache)."""
    from spts.adapters import adapter_for

    wanted = set(layer_indices)
    inputs: dict[int, tuple[torch.Tensor, tuple]] = {}

    def record(index, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        inputs[index] = (hidden.clone(), kwargs["position_embeddings"])

    layers = adapter_for(model).layers()
    handles = [
        layers[i].register_forward_pre_hook(functools.partial(record, i), with_kwargs=True) for i in sorted(wanted)
    ]
    try:
        with torch.inference_mode():
            model(input_ids, use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def probe_layer_input(
    adapter, layer, hidden: torch.Tensor, position_embeddings, probe_tokens: int = 1, head_aggregation: str = "mean"
) -> torch.Tensor:
    """PAP scores (B, n) of every token of a full layer input, probed by the last ``probe_tokens`` tokens' queries.

    For analysis (fidelity reports, attention studies) on the unmodified model; the skipping
    prefill computes the same scores over its candidates, reusing the keys for attention.
    """
    cos, sin = position_embeddings
    normed = adapter.input_norm(layer, hidden)
    keys = adapter.keys(layer, normed, cos, sin)
    n_tokens = hidden.shape[1]
    n_probe = min(probe_tokens, n_tokens)
    query = adapter.queries(layer, normed[:, -n_probe:], cos[:, -n_probe:], sin[:, -n_probe:])
    offsets = torch.arange(n_tokens - n_probe, n_tokens, device=hidden.device) if n_probe > 1 else None
    return attention_probe_scores(query, keys, adapter.attention(layer).scaling, offsets, head_aggregation)
