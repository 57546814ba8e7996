"""Prefix reuse for ``spts eval --reuse-prefix``: layers that a method leaves alone are computed once per sample.

An SPTS schedule (SPTS itself, its variants, a tuned file, FastKV and LazyLLM, which are schedules) runs layers
``[0, start_layer)`` exactly as the unmodified model does. When the full model answers a sample first, its
prefill records what those layers output and cache (the hidden-state cache of ``spts tune``,
:class:`spts.tuning.objective.Reference`), and when each layer finished. Every schedule then *replays* its
prefix (:func:`spts.tuning.objective.replay_prefix`) instead of computing it: the same answers, at the cost of
its skipping layers only. Its TTFT is the full prefill's time up to its start layer plus its own replayed
prefill, both measured on this sample; GemFilter (its own passes) always runs in full.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spts.adapters import adapter_for
from spts.eval.methods import Method
from spts.runtime.transformers_api import cache_argument
from spts.tuning.objective import Reference, replay_prefix


def replays(method: Method) -> bool:
    """Whether ``method`` leaves the first layers to the unmodified model (an SPTS schedule), so it can replay them."""
    return method.config is not None and method.peer is None


def reuse_depth(methods: Sequence[Method]) -> int:
    """Layers worth recording from the full model: the deepest start layer among methods that replay (0: none)."""
    return max((m.config.start_layer for m in methods if replays(m)), default=0)


@dataclass
class PrefixRecording:
    """The full model's layers ``[0, depth)`` on one prompt, filled in during its prefill by :func:`recording`."""

    reference: Reference
    finished_at: list[float]
    """``finished_at[i]``: seconds from the prefill's start until layer ``i`` had finished."""

    @classmethod
    def empty(cls, prompt_id: str, input_ids: torch.Tensor, depth: int) -> PrefixRecording:
        reference = Reference(prompt_id, input_ids, [], [], layer_outputs=[None] * depth, layer_kv=[None] * depth)
        return cls(reference, [0.0] * depth)

    @property
    def depth(self) -> int:
        return self.reference.depth

    @property
    def complete(self) -> bool:
        return all(kv is not None for kv in self.reference.layer_kv)

    def replaying(self, model: nn.Module, method: Method) -> contextlib.AbstractContextManager[None]:
        """Within the block, ``method``'s prefill replays its prefix from this recording."""
        if not replays(method):
            raise ValueError(f"method {method.name!r} runs its first layers itself; it cannot replay them")
        if not self.complete:
            raise RuntimeError("this prefix recording was not filled by a full prefill of the prompt")
        return replay_prefix(model, self.reference, method.config.start_layer)

    def prefix_seconds(self, method: Method) -> float:
        """What computing ``method``'s replayed layers took the full model on this sample."""
        return self.finished_at[method.config.start_layer - 1]


@contextlib.contextmanager
def recording(model: nn.Module, target: PrefixRecording, clock: Callable[[], float]) -> Iterator[Callable[[], None]]:
    """Fill ``target`` from the unmodified model's prefill of its prompt, run within the block.

    Yields a function to call right before the prefill starts (the time origin). Keys and values are copied, so
    that decoding from the full model's cache afterwards leaves the recording intact.
    """
    layers = adapter_for(model).layers()
    reference = target.reference
    origin = [0.0]

    def started() -> None:
        origin[0] = clock()

    def record(index: int, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        target.finished_at[index] = clock() - origin[0]
        reference.layer_outputs[index] = output
        _, cache = cache_argument(kwargs)
        if cache is None:
            raise RuntimeError("prefix reuse needs the full model's prefill to run with a cache (use_cache=True)")
        held = cache.layers[index]
        reference.layer_kv[index] = (held.keys.clone(), held.values.clone())

    handles = [
        layers[i].register_forward_hook(functools.partial(record, i), with_kwargs=True) for i in range(target.depth)
    ]
    try:
        yield started
    finally:
        for handle in handles:
            handle.remove()
