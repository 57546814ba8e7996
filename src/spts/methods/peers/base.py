"""What every peer method shares: the prefill interface, and layer choices scaled from a paper's model to ours."""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from spts.adapters import adapter_for
from spts.config import Budget


@runtime_checkable
class PeerPrefill(Protocol):
    """A prefill of its own over the unmodified model (GemFilter's two passes), for methods an ``SPTSConfig``
    cannot express. The eval runner and the bench harness call it through :class:`spts.eval.Method`."""

    def prefill(self, model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Last-position logits (B, vocab) of the prompt ``ids`` (B, T) and the cache to decode from."""
        ...

    def describe(self) -> dict[str, Any]:
        """Everything that decides the outputs (for the method's fingerprint)."""
        ...


def num_layers_of(model: nn.Module) -> int:
    """The decoder layer count of a supported model (an unsupported family raises UnsupportedModelError)."""
    return len(adapter_for(model).layers())


def scaled_layer(paper_layer: int, paper_layers: int, num_layers: int) -> int:
    """A paper's layer choice at the same relative depth in a model of ``num_layers`` layers."""
    return round(paper_layer * num_layers / paper_layers)


def check_layer(what: str, layer: int, low: int, high: int, num_layers: int) -> int:
    """``layer`` if it lies in ``[low, high]``, else a ValueError saying which layers this model allows."""
    if not low <= layer <= high:
        raise ValueError(f"{what} {layer} is out of range for this {num_layers}-layer model: use {low}..{high}")
    return layer


def check_keep(what: str, keep: Budget) -> Budget:
    """``keep`` if it is a token count >= 1 or a fraction of the prompt in (0, 1], else a ValueError."""
    if isinstance(keep, bool) or not isinstance(keep, int | float):
        raise ValueError(f"{what} must be a token count or a fraction of the prompt, got {keep!r}")
    if isinstance(keep, float) and not 0 < keep <= 1:
        raise ValueError(f"{what}={keep:g} as a fraction of the prompt must be in (0, 1]; a token count is an integer")
    if isinstance(keep, int) and keep < 1:
        raise ValueError(f"{what}={keep} as a token count must be >= 1")
    return keep


def format_keep(keep: Budget) -> str:
    """``keep`` as a spec writes it: a fraction always with a point (``1.0`` is the whole prompt, ``1`` one token)."""
    text = f"{keep:g}"
    return text if isinstance(keep, int) or "." in text or "e" in text else f"{text}.0"


def kept_tokens(keep: Budget, prompt_length: int) -> int:
    """Tokens kept of a prompt: a count, or a fraction rounded up (as SPTSConfig budgets), at most the prompt."""
    return min(prompt_length, keep if isinstance(keep, int) else math.ceil(keep * prompt_length))
