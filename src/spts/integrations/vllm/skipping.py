"""SPTS inside one vLLM forward: which requests of the flattened batch skip, and the skipping decoder layers.

A vLLM step runs one flattened batch: fresh prefills, decodes, anything the scheduler mixed. Per step, ``begin``
reads the attention metadata (``query_start_loc``, ``seq_lens``, ``block_table``) and sorts requests:

- a fresh prefill (``seq_len == query_len``) of at least ``min_prompt_tokens`` tokens is an SPTS prefill: in each
  skipping layer its rows go through ``spts.runtime.prefill.skipping_prefill``, the HF runtime's own layer pass
  (probe, selection, MSDP, LTP), with a cache writer that stores the kept tokens' K/V packed at the front of the
  request's blocks (the paper's compressed cache);
- every other request takes the stock layer. In a layer where it holds a compressed cache, its ``seq_len`` and
  slot mapping are shifted back by the tokens that layer dropped, so decoding attends over the kept tokens only.

Requests are known by their first KV block (the model never sees request ids; blocks are not shared because
prefix caching is refused). A fresh prefill always rewrites its block's record, so a record never outlives the
request that owns the block.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spts.config import SPTSConfig
from spts.policies import FFNScorer, plan_layers
from spts.runtime.prefill import PrefillContext, PrefillState, skipping_prefill
from spts.runtime.stats import PrefillStats
from spts.runtime.timing import IntervalTimer

from .adapter import VLLMAdapter, rotary_tables, sdpa_attention


@dataclass
class RequestRecord:
    """The compressed cache of one request: tokens each skipping layer did not cache."""

    prompt_length: int
    dropped: dict[int, int] = field(default_factory=dict)


@dataclass
class Prefill:
    """One SPTS prefill in the current step: its rows in the flattened batch and its HF-runtime state."""

    start: int
    stop: int
    state: PrefillState
    record: RequestRecord
    tables: tuple[torch.Tensor, torch.Tensor] | None = None  # rotary (cos, sin), made by the first skipping layer


@dataclass
class StepPlan:
    """How one vLLM step's requests are treated (see the module docstring)."""

    query_start_loc: list[int]
    seq_lens: list[int]
    block_table: torch.Tensor
    prefills: list[Prefill]
    others: list[int]  # request indices that take the stock layer
    records: dict[int, RequestRecord]  # request index -> its compressed cache, for the others

    def touches(self, layer_idx: int) -> bool:
        """Whether this layer differs from stock for this step."""
        return bool(self.prefills) or any(r.dropped.get(layer_idx) for r in self.records.values())


class CacheWriter:
    """Plays the HF cache's ``update`` for one request in one layer: writes the K/V it is given (the kept tokens,
    in causal order) into the request's first slots, and records how many tokens the layer dropped."""

    def __init__(self, attention: nn.Module, slots: torch.Tensor, record: RequestRecord) -> None:
        self.attention, self.slots, self.record = attention, slots, record

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        kept = keys.shape[2]
        self.record.dropped[layer_idx] = self.record.prompt_length - kept
        kv_cache = self.attention.kv_cache
        if kv_cache.numel():  # empty while vLLM profiles memory, before the cache exists
            # (1, kv_heads, kept, d) -> (kept, kv_heads, d), the layout vLLM's cache update takes.
            k, v = (t[0].transpose(0, 1).contiguous() for t in (keys, values))
            self.attention.impl.do_kv_cache_update(self.attention, k, v, kv_cache, self.slots[:kept])
        return keys, values


class SPTSModelState:
    """SPTS attached to one vLLM model instance: the schedule, the policies, the per-request records."""

    def __init__(
        self,
        config: SPTSConfig,
        adapter: VLLMAdapter,
        ffn_scorer: FFNScorer,
        num_layers: int,
        min_prompt_tokens: int,
        dtype: torch.dtype,
    ) -> None:
        self.config = config
        self.adapter = adapter
        self.ffn_scorer = ffn_scorer
        self.num_layers = num_layers
        self.min_prompt_tokens = min_prompt_tokens
        self.dtype = dtype
        self.context = PrefillContext(
            adapter=adapter,  # type: ignore[arg-type]  # duck-typed: the parts skipping_prefill calls
            config=config,
            attention_function=sdpa_attention,
            attn_implementation="sdpa",
            ffn_scorer=ffn_scorer,
            selection="probe",
        )
        self.records: dict[int, RequestRecord] = {}
        self.plan: StepPlan | None = None
        self.layer_names: dict[int, str] = {}
        self.last_prefills: list[PrefillStats] = []  # the last step's SPTS prefills (tests, debugging)
        self.prefills_done = 0

    # ---------------------------------------------------------------- per step
    def begin(self) -> None:
        from vllm.forward_context import get_forward_context, is_forward_context_available

        self.plan = None
        if not self.layer_names or not is_forward_context_available():
            return
        context = get_forward_context()
        metadata = context.attn_metadata
        if not isinstance(metadata, dict):
            return  # None while vLLM warms up; a list only under speculative decoding (refused)
        first = metadata.get(next(iter(self.layer_names.values())))
        if first is None or getattr(first, "query_start_loc", None) is None:
            return
        starts = first.query_start_loc.tolist()
        seq_lens = first.seq_lens.tolist()
        block_table = first.block_table
        prefills: list[Prefill] = []
        others: list[int] = []
        records: dict[int, RequestRecord] = {}
        for r, seq_len in enumerate(seq_lens):
            start, stop = starts[r], starts[r + 1]
            length = stop - start
            if length == 0:
                continue
            owner = int(block_table[r, 0])
            if seq_len == length:  # a fresh prefill: whatever its block held before is gone
                self.records.pop(owner, None)
                if length >= self.min_prompt_tokens:
                    record = self.records[owner] = RequestRecord(length)
                    prefills.append(Prefill(start, stop, self._prefill_state(length), record))
                    continue
            elif owner in self.records:
                records[r] = self.records[owner]
            others.append(r)
        self.plan = StepPlan(starts, seq_lens, block_table, prefills, others, records)

    def end(self) -> None:
        if self.plan is not None and self.plan.prefills:
            self.last_prefills = [p.state.stats for p in self.plan.prefills]
            self.prefills_done += len(self.plan.prefills)
        self.plan = None

    def _prefill_state(self, length: int) -> PrefillState:
        stats = PrefillStats(
            prompt_length=length,
            batch_size=1,
            probe_timer=IntervalTimer(torch.device("cpu")),
            total_timer=IntervalTimer(torch.device("cpu")),
        )
        plans = plan_layers(self.config, self.num_layers, length)
        return PrefillState(context=self.context, plans=plans, candidates=None, scores=None, stats=stats)

    # ---------------------------------------------------------------- one skipping layer
    def layer_forward(
        self,
        layer_idx: int,
        layer: nn.Module,
        original: Callable[..., tuple[torch.Tensor, torch.Tensor]],
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        residual: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        plan = self.plan
        if plan is None or not plan.touches(layer_idx):
            return original(positions, hidden_states, residual, **kwargs)
        # vLLM carries the residual stream as (hidden, residual) and adds them in the next norm; SPTS works on the
        # sum, and hands it on as the residual with a zero update (adding zero is exact).
        x = hidden_states if residual is None else hidden_states + residual
        out = x.clone()
        attention = layer.self_attn.attn
        from vllm.forward_context import get_forward_context

        slot_mapping = get_forward_context().slot_mapping[attention.layer_name]
        for prefill in plan.prefills:
            if prefill.tables is None:
                rows = positions[prefill.start : prefill.stop]
                prefill.tables = rotary_tables(layer.self_attn.rotary_emb, rows, x.dtype)
            writer = CacheWriter(attention, slot_mapping[prefill.start : prefill.stop], prefill.record)
            rows_out = skipping_prefill(
                prefill.state, layer_idx, layer, x[None, prefill.start : prefill.stop], prefill.tables, writer
            )
            out[prefill.start : prefill.stop] = rows_out[0]
        if plan.others:
            self._stock_rows(layer_idx, layer, plan, positions, x, out)
        return torch.zeros_like(out), out

    def _stock_rows(
        self,
        layer_idx: int,
        layer: nn.Module,
        plan: StepPlan,
        positions: torch.Tensor,
        x: torch.Tensor,
        out: torch.Tensor,
    ) -> None:
        """The stock layer on the requests that do not skip, attending over what this layer cached for them."""
        attention = layer.self_attn.attn
        block_size = attention.kv_cache.shape[2] if attention.kv_cache.numel() else 1
        rows: list[torch.Tensor] = []
        slots: list[torch.Tensor] = []
        starts, seq_lens = [0], []
        from vllm.forward_context import get_forward_context

        context = get_forward_context()
        original_slots = context.slot_mapping[attention.layer_name]
        for r in plan.others:
            start, stop = plan.query_start_loc[r], plan.query_start_loc[r + 1]
            record = plan.records.get(r)
            dropped = record.dropped.get(layer_idx, 0) if record is not None else 0
            rows.append(torch.arange(start, stop))
            starts.append(starts[-1] + stop - start)
            seq_lens.append(plan.seq_lens[r] - dropped)
            if dropped:
                # The new tokens follow the kept ones in the packed layout: logical index = position - dropped.
                logical = torch.arange(seq_lens[-1] - (stop - start), seq_lens[-1])
                blocks = plan.block_table[r, logical // block_size].to(torch.int64)
                slots.append(blocks * block_size + logical % block_size)
            else:
                slots.append(original_slots[start:stop])
        index = torch.cat(rows)
        metadata = self._metadata(attention, plan, starts, seq_lens, torch.cat(slots).to(original_slots.dtype))
        with _swapped(context, attention.layer_name, metadata):
            x_rows = x[index]
            update = layer.self_attn(positions=positions[index], hidden_states=layer.input_layernorm(x_rows))
            x_rows = x_rows + update
            x_rows = x_rows + layer.mlp(layer.post_attention_layernorm(x_rows))
        out[index] = x_rows

    def _metadata(self, attention: nn.Module, plan: StepPlan, starts: list[int], seq_lens: list[int], slots):
        """CPU attention metadata for the stock requests alone, built as vLLM's CPU metadata builder does."""
        from vllm import _custom_ops as ops
        from vllm import envs
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionMetadata

        start_loc = torch.tensor(starts, dtype=torch.int32)
        lens = torch.tensor(seq_lens, dtype=torch.int32)
        scheduler_metadata = ops.cpu_attn_get_scheduler_metadata(
            num_reqs=len(seq_lens),
            num_heads=attention.num_heads,
            num_kv_heads=attention.num_kv_heads,
            head_dim=attention.head_size,
            seq_lens=lens,
            dtype=self.dtype,
            query_start_loc=start_loc,
            causal=True,
            sliding_window_size=-1,
            isa=attention.isa,
            enable_kv_split=envs.VLLM_CPU_ATTN_SPLIT_KV,
            kv_cache_dtype=attention.kv_cache_dtype,
        )
        return CPUAttentionMetadata(
            num_actual_tokens=starts[-1],
            max_query_len=max(b - a for a, b in itertools.pairwise(starts)),
            query_start_loc=start_loc,
            max_seq_len=max(seq_lens),
            seq_lens=lens,
            block_table=plan.block_table[plan.others],
            slot_mapping=slots,
            scheduler_metadata=scheduler_metadata,
            causal=True,
        )


@contextlib.contextmanager
def _swapped(context: Any, layer_name: str, metadata: Any) -> Iterator[None]:
    """Give one attention layer other metadata and slots for the duration of a call, then put vLLM's back."""
    saved_metadata, saved_slots = context.attn_metadata[layer_name], context.slot_mapping[layer_name]
    context.attn_metadata[layer_name], context.slot_mapping[layer_name] = metadata, metadata.slot_mapping
    try:
        yield
    finally:
        context.attn_metadata[layer_name], context.slot_mapping[layer_name] = saved_metadata, saved_slots
