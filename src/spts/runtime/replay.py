"""Prefix replay: what the unmodified model's first layers computed on a prompt, recorded once and replayed by
every SPTS schedule that leaves those layers alone.

An SPTS schedule runs layers ``[0, start_layer)`` exactly as the unmodified model does. When the full model
prefills a prompt first, :func:`recording` keeps each of those layers' output and the keys/values it cached (and
when it finished); within :func:`replay_prefix`, a schedule's prefill then takes them from the recording instead
of computing them: the same logits and cache, at the cost of its skipping layers only. ``spts tune`` scores many
configs per prompt this way, and ``spts eval --reuse-prefix`` answers with many schedules per sample.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spts.adapters import adapter_for
from spts.runtime.transformers_api import cache_argument


@dataclass
class RecordedPrefix:
    """Layers ``[0, depth)`` of the unmodified model on one prompt, filled in by :func:`recording`."""

    input_ids: torch.Tensor
    layer_outputs: list[Any]
    layer_kv: list[tuple[torch.Tensor, torch.Tensor] | None]
    finished_at: list[float]
    """``finished_at[i]``: seconds from the prefill's start until layer ``i`` had finished (0.0 when not timed)."""

    @classmethod
    def empty(cls, input_ids: torch.Tensor, depth: int) -> RecordedPrefix:
        return cls(input_ids, [None] * depth, [None] * depth, [0.0] * depth)

    @property
    def depth(self) -> int:
        """Layers recorded: schedules starting at most here can replay their prefix."""
        return len(self.layer_outputs)

    @property
    def complete(self) -> bool:
        return all(kv is not None for kv in self.layer_kv)


@contextlib.contextmanager
def recording(
    model: nn.Module, target: RecordedPrefix, clock: Callable[[], float] | None = None, copy: bool = True
) -> Iterator[Callable[[], None]]:
    """Fill ``target`` from the unmodified model's prefill of its prompt (with a cache), run within the block.

    Yields a function to call right before the prefill starts: the origin of ``finished_at`` when ``clock`` is
    given. ``copy``: keep copies of the keys and values, so that whatever happens to the model's cache afterwards
    leaves the recording intact; without it the recording holds the cache's own tensors (which transformers'
    dynamic cache replaces rather than writes into when it grows)."""
    layers = adapter_for(model).layers()
    origin = [0.0]

    def started() -> None:
        if clock is not None:
            origin[0] = clock()

    def record(index: int, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        if clock is not None:
            target.finished_at[index] = clock() - origin[0]
        target.layer_outputs[index] = output
        _, cache = cache_argument(kwargs)
        if cache is None:
            raise RuntimeError("recording a prefix needs the full model's prefill to run with a cache (use_cache=True)")
        held = cache.layers[index]
        target.layer_kv[index] = (held.keys.clone(), held.values.clone()) if copy else (held.keys, held.values)

    handles = [
        layers[i].register_forward_hook(functools.partial(record, i), with_kwargs=True) for i in range(target.depth)
    ]
    try:
        yield started
    finally:
        for handle in handles:
            handle.remove()


def _replayed_forward(prefix: RecordedPrefix, layer_idx: int, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
    if hidden_states.shape[1] != prefix.input_ids.shape[-1]:
        raise RuntimeError(
            f"layer {layer_idx} replays a {prefix.input_ids.shape[-1]}-token prefill but was called on "
            f"{hidden_states.shape[1]} tokens"
        )
    _, cache = cache_argument(kwargs)
    if cache is not None:
        keys, values = prefix.layer_kv[layer_idx]
        cache.update(keys, values, layer_idx)
    return prefix.layer_outputs[layer_idx]


@contextlib.contextmanager
def replay_prefix(model: nn.Module, prefix: RecordedPrefix, upto: int) -> Iterator[None]:
    """Within the block, layers ``[0, upto)`` return the recorded outputs and write the recorded keys/values into
    the cache they are given, instead of computing. Instance attributes only; restored after."""
    if upto > prefix.depth:
        raise ValueError(f"the recording holds {prefix.depth} layers; cannot replay {upto}")
    if not all(prefix.layer_kv[i] is not None for i in range(upto)):
        raise RuntimeError("this prefix recording was not filled by a full prefill of the prompt")
    layers = adapter_for(model).layers()
    saved = {}
    for i in range(upto):
        saved[i] = layers[i].__dict__.get("forward")
        layers[i].forward = functools.partial(_replayed_forward, prefix, i)
    try:
        yield
    finally:
        for i, previous in saved.items():
            if previous is None:
                del layers[i].forward
            else:
                layers[i].forward = previous
