"""Prefix reuse for ``spts eval --reuse-prefix``: layers that a method leaves alone are computed once per sample.

An SPTS schedule (SPTS itself, its variants, a tuned file, FastKV and LazyLLM, which are schedules) runs layers
``[0, start_layer)`` exactly as the unmodified model does. When the full model answers a sample first, its
prefill records what those layers output and cache, and when each layer finished
(:class:`spts.runtime.replay.RecordedPrefix`). Every schedule then *replays* its prefix
(:func:`spts.runtime.replay.replay_prefix`) instead of computing it: the same answers, at the cost of its skipping
layers only. Its TTFT is the full prefill's time up to its start layer plus its own replayed prefill, both measured
on this sample; GemFilter (its own passes) always runs in full, and so does a schedule with block-sparse attention
below its start layer (``SPTSConfig.sparse_from``), whose first layers are not the full model's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from torch import nn

from spts.methods import Method
from spts.runtime.replay import RecordedPrefix, replay_prefix


def replays(method: Method) -> bool:
    """Whether ``method`` leaves the first layers to the unmodified model (an SPTS schedule without sparse attention
    there), so it can replay them."""
    config = method.config
    return config is not None and method.peer is None and config.exact_prefix() == config.start_layer


def reuse_depth(methods: Sequence[Method]) -> int:
    """Layers worth recording from the full model: the deepest start layer among methods that replay (0: none)."""
    return max((m.config.start_layer for m in methods if replays(m)), default=0)


def replaying(model: nn.Module, prefix: RecordedPrefix, method: Method) -> contextlib.AbstractContextManager[None]:
    """Within the block, ``method``'s prefill replays its prefix from ``prefix``."""
    if not replays(method):
        raise ValueError(f"method {method.name!r} runs its first layers itself; it cannot replay them")
    return replay_prefix(model, prefix, method.config.start_layer)


def prefix_seconds(prefix: RecordedPrefix, method: Method) -> float:
    """What computing ``method``'s replayed layers took the full model on this sample."""
    return prefix.finished_at[method.config.start_layer - 1]
