"""The skipping forward pass of one decoder layer during prefill.

The residual stream keeps its full length (B, T, D) from layer to layer, so positions, rotary
tables and the final hidden state stay where transformers expects them. Inside a skipping layer
only the candidate rows are gathered, only the active ones are computed, and their updates are
scattered back; every other token rides the residual unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from spts.adapters import DecoderAdapter
from spts.config import SPTSConfig
from spts.errors import SPTSError
from spts.policies import FFNScorer, attention_probe_scores, pool_scores, protected_tokens, top_tokens
from spts.runtime.local_attention import local_attention
from spts.runtime.stats import LayerStats, PrefillStats


@dataclass(frozen=True)
class PrefillContext:
    """What a skipping layer computes with: the model's parts, the schedule and the selection policies."""

    adapter: DecoderAdapter
    config: SPTSConfig
    attention_function: Callable
    attn_implementation: str
    ffn_scorer: FFNScorer
    selection: str  # "probe" (SPTS) or "random" (the schedule's speed ceiling)


@dataclass
class PrefillState:
    """What one prefill carries from layer to layer: the surviving candidates and the latest probe."""

    context: PrefillContext
    plans: dict
    candidates: torch.Tensor | None  # (B, C) original positions, ascending; None while all tokens are
    scores: torch.Tensor | None  # (B, C) latest attention-probe scores over the candidates
    stats: PrefillStats
    # (B, C) probe scores summed over this stage's layers so far (config.accumulate_scores), else None
    stage_scores: torch.Tensor | None = None


def gather_rows(x: torch.Tensor, index: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Rows ``index`` (B, n) of ``x`` along ``dim`` (batch first), each batch row its own rows."""
    shape = list(x.shape)
    shape[dim] = index.shape[1]
    view = [index.shape[0]] + [1] * (x.dim() - 1)
    view[dim] = index.shape[1]
    return torch.gather(x, dim, index.view(view).expand(shape))


def scatter_rows(x: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x`` with rows ``index`` (B, n) along dim 1 replaced by ``rows`` (out of place)."""
    return x.scatter(1, index[..., None].expand(-1, -1, x.shape[-1]), rows)


def _causal_mask(implementation: str, n: int, like: torch.Tensor) -> torch.Tensor | None:
    # SDPA and FlashAttention apply causality themselves when given no mask, as in the stock model.
    if implementation != "eager":
        return None
    blocked = torch.ones(n, n, dtype=torch.bool, device=like.device).triu(1)
    mask = torch.zeros(n, n, dtype=like.dtype, device=like.device)
    return mask.masked_fill(blocked, torch.finfo(like.dtype).min)[None, None]


def _rows_attending_candidates(active: torch.Tensor, n_candidates: int, like: torch.Tensor) -> torch.Tensor:
    """Additive mask (B, 1, n_active, n_candidates) letting each active query see the candidates up to itself.

    Candidates are in original order, so "up to itself" is a comparison of candidate indices."""
    visible = torch.arange(n_candidates, device=active.device)[None, None, :] <= active[:, :, None]
    mask = torch.zeros(visible.shape, dtype=like.dtype, device=like.device)
    return mask.masked_fill(~visible, torch.finfo(like.dtype).min)[:, None]


def _full_view_attention(
    context: PrefillContext,
    layer: nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    tail: int,
    keys: torch.Tensor | None,
) -> torch.Tensor:
    """Attention (B, tail, heads, d) of the prompt's last ``tail`` tokens over every token of it, each token's keys
    and values from its current residual (``config.full_view_tokens``); ``keys``: those of every token when the
    caller has them."""
    adapter = context.adapter
    batch, length, _ = hidden_states.shape
    cos, sin = (t.expand(batch, -1, -1) for t in position_embeddings)
    normed = adapter.input_norm(layer, hidden_states)
    if keys is None:
        keys = adapter.keys(layer, normed, cos, sin)
    values = adapter.values(layer, normed)
    queries = adapter.queries(layer, normed[:, -tail:], cos[:, -tail:], sin[:, -tail:])
    mask = None
    if tail > 1:
        tail_positions = torch.arange(length - tail, length, device=hidden_states.device).expand(batch, -1)
        mask = _rows_attending_candidates(tail_positions, length, hidden_states)
    attention = adapter.attention(layer)
    out, _ = context.attention_function(attention, queries, keys, values, mask, dropout=0.0, scaling=attention.scaling)
    return out


def skipping_prefill(
    state: PrefillState,
    layer_idx: int,
    layer: nn.Module,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    cache,
) -> torch.Tensor:
    """Run layer ``layer_idx`` on the candidates of this prefill; return the full-length residual."""
    context = state.context
    adapter, config = context.adapter, context.config
    plan = state.plans[layer_idx]
    batch, length, _ = hidden_states.shape

    def positions_of_candidates() -> torch.Tensor:
        if state.candidates is not None:
            return state.candidates
        return torch.arange(length, device=hidden_states.device).expand(batch, -1)

    recent = max(config.recent_tokens, config.full_view_tokens)
    if plan.prune_to is not None:
        # MSDP: the latest probe decides which candidates survive this stage boundary for good.
        protected = protected_tokens(positions_of_candidates(), length, config.sink_tokens, recent)
        keep = top_tokens(state.scores, plan.prune_to, protected)
        state.candidates = keep if state.candidates is None else torch.gather(state.candidates, 1, keep)
        state.scores = state.stage_scores = None
    candidates = state.candidates
    positions = positions_of_candidates()
    protected = protected_tokens(positions, length, config.sink_tokens, recent)

    cos, sin = (t.expand(batch, -1, -1) for t in position_embeddings)
    if candidates is None:
        x = hidden_states
    else:
        x, cos, sin = (gather_rows(t, candidates) for t in (hidden_states, cos, sin))
    n_candidates = x.shape[1]
    assert n_candidates == plan.candidates, "the schedule and the pruning disagree"
    budget = plan.budget

    normed = adapter.input_norm(layer, x)
    keys = adapter.keys(layer, normed, cos, sin)
    candidate_keys = keys
    attention = adapter.attention(layer)

    select_attention = config.skip_attention and budget < n_candidates
    select_ffn = config.skip_ffn and budget < n_candidates
    scores = None
    if context.selection == "random" and (select_attention or select_ffn or plan.scores_needed_next):
        scores = state.scores = torch.rand(batch, n_candidates, device=x.device)
    elif select_attention or select_ffn or plan.scores_needed_next:
        state.stats.probe_timer.start()
        n_probe = min(config.probe_tokens, n_candidates)
        probe_queries = adapter.queries(layer, normed[:, -n_probe:], cos[:, -n_probe:], sin[:, -n_probe:])
        offsets = None
        if n_probe > 1:
            offsets = torch.arange(n_candidates - n_probe, n_candidates, device=x.device)
        scores = attention_probe_scores(probe_queries, keys, attention.scaling, offsets, config.head_aggregation)
        if config.pool_kernel > 1:
            scores = pool_scores(scores, config.pool_kernel)
        if config.accumulate_scores:
            scores = state.stage_scores = scores if state.stage_scores is None else state.stage_scores + scores
        state.stats.probe_timer.stop()
        state.scores = scores

    # Attention of the active tokens, at their original positions, keys reused from the probe: over the
    # active tokens only (the paper), or over every candidate (kv_complete). With local_window the other
    # candidates attend over their neighbourhood; without it they keep their state (the paper).
    cached_all = not select_attention or config.kv_complete or config.cache_skipped
    local_update = None
    if select_attention:
        active = top_tokens(scores, budget, protected)
        every_value = config.kv_complete or config.cache_skipped or config.local_window > 0
        values = adapter.values(layer, normed) if every_value else adapter.values(layer, gather_rows(normed, active))
        if config.local_window:
            # The candidates left out get an attention update from their neighbourhood instead of none.
            all_queries = adapter.queries(layer, normed, cos, sin)
            queries = gather_rows(all_queries, active, dim=2)
            local_update = local_attention(
                context.attention_function, attention, all_queries, keys, values,
                config.local_window, config.local_sinks, attention.scaling,
            )  # fmt: skip
        else:
            queries = adapter.queries(layer, *(gather_rows(t, active) for t in (normed, cos, sin)))
        if config.kv_complete:
            mask = _rows_attending_candidates(active, n_candidates, x)
        else:
            mask = _causal_mask(context.attn_implementation, budget, x)
            if not config.cache_skipped:
                keys = gather_rows(keys, active, dim=2)
                if every_value:
                    values = gather_rows(values, active, dim=2)
    else:
        active = None
        values = adapter.values(layer, normed)
        queries = adapter.queries(layer, normed, cos, sin)
        mask = _causal_mask(context.attn_implementation, n_candidates, x)
    if cache is not None:
        keys, values = cache.update(keys, values, layer_idx)
    if select_attention and config.cache_skipped:
        # Every candidate went to the cache for decoding; this layer's prefill attends over the active ones.
        keys, values = gather_rows(keys, active, dim=2), gather_rows(values, active, dim=2)
    attn_out, _ = context.attention_function(
        attention, queries, keys, values, mask, dropout=0.0, scaling=attention.scaling
    )
    if config.full_view_tokens:
        # The last tokens are protected, so they are the last rows of the queries (active rows ascend), unless the
        # budget cannot hold them with the other protected tokens.
        tail = min(config.full_view_tokens, length)
        query_positions = positions if active is None else torch.gather(positions, 1, active)
        if query_positions.shape[1] < tail or bool((query_positions[:, -tail:] < length - tail).any()):
            raise SPTSError(
                f"full_view_tokens={config.full_view_tokens}: layer {layer_idx} keeps {budget} tokens, too few to "
                f"hold the last {tail} with the {config.sink_tokens} sink tokens; lower full_view_tokens or "
                "sink_tokens, or raise the budgets"
            )
        view = _full_view_attention(
            context, layer, hidden_states, position_embeddings, tail, candidate_keys if candidates is None else None
        )
        attn_out = torch.cat((attn_out[:, :-tail], view), dim=1)
    if local_update is not None:
        update = adapter.attention_output(layer, scatter_rows(local_update.flatten(2), active, attn_out.flatten(2)))
        x = x + update
    else:
        update = adapter.attention_output(layer, attn_out)
        x = x + update if active is None else scatter_rows(x, active, gather_rows(x, active) + update)

    # FFN on the tokens the FFN policy ranks highest: ||f(x)|| * S_MHA with LTP proxies, S_MHA without.
    scorer = context.ffn_scorer
    ffn_active: torch.Tensor | None = None
    ffn_inputs: torch.Tensor | None = None
    if select_ffn:
        if scorer.reuses_attention_selection and active is not None:
            ffn_active = active
        else:
            ffn_inputs = adapter.post_attention_norm(layer, x) if scorer.needs_inputs else None
            ffn_active = top_tokens(scorer.score(layer_idx, ffn_inputs, scores), budget, protected)
    if ffn_active is None:
        x = x + adapter.ffn(layer, adapter.post_attention_norm(layer, x))
    else:
        rows = gather_rows(x, ffn_active)
        normed_rows = (
            adapter.post_attention_norm(layer, rows) if ffn_inputs is None else gather_rows(ffn_inputs, ffn_active)
        )
        x = scatter_rows(x, ffn_active, rows + adapter.ffn(layer, normed_rows))

    n_attention = n_candidates if active is None else budget
    n_ffn = n_candidates if ffn_active is None else budget
    state.stats.candidates[layer_idx] = positions
    state.stats.kv_positions[layer_idx] = positions if cached_all else torch.gather(positions, 1, active)
    state.stats.layers.append(
        LayerStats(
            layer_idx, plan.stage, n_candidates, n_attention, n_ffn, kv_tokens=n_candidates if cached_all else budget
        )
    )
    return x if candidates is None else scatter_rows(hidden_states, candidates, x)
