"""What a method is: a name plus what :func:`spts.enable` needs (an SPTS config), a peer's own prefill, or
neither (the unmodified model). Every method runs the same way (:meth:`Method.applied`, then
:meth:`Method.prefill`), so the eval runner, the bench harness and the tuner time and decode each alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spts.config import SPTSConfig
from spts.generation import prefill_with_cache
from spts.methods.peers import PeerPrefill
from spts.runtime.cache import cache_tokens_per_layer
from spts.runtime.engine import enabled, last_stats


@dataclass(frozen=True)
class Method:
    name: str
    config: SPTSConfig | None = None
    """None runs the unmodified model (or ``peer``'s prefill)."""
    selection: str = "probe"
    peer: PeerPrefill | None = None
    """A prefill of its own over the unmodified model (GemFilter), for methods no SPTS config expresses."""

    def __post_init__(self) -> None:
        if self.peer is not None and self.config is not None:
            raise ValueError(f"method {self.name!r}: a peer runs its own prefill; give it no SPTS config")

    @property
    def unmodified(self) -> bool:
        """Whether this is the full model: neither an SPTS config nor a peer's prefill."""
        return self.config is None and self.peer is None

    @contextlib.contextmanager
    def applied(self, model: nn.Module, proxies: Any = None) -> Iterator[nn.Module]:
        """The model as this method runs it: SPTS enabled with its config (``proxies``: its FFN scorer), else as is."""
        if self.config is None:
            yield model
        else:
            with enabled(model, self.config, proxies, self.selection):
                yield model

    def prefill(self, model: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Within :meth:`applied`: the prefill that yields the first token, i.e. last-position logits (B, vocab)
        and the cache to decode from (the model's forward, SPTS's if enabled, or the peer's own passes)."""
        return prefill_with_cache(model, ids) if self.peer is None else self.peer.prefill(model, ids)

    def kv_fraction(self, model: nn.Module, cache: Any, prompt_length: int) -> float:
        """Cached tokens of the last :meth:`prefill` over what the full model caches (1.0 = no compression)."""
        if self.config is not None:
            return last_stats(model).kv_fraction
        if self.peer is None:
            return 1.0
        held = cache_tokens_per_layer(cache)
        return sum(held) / (prompt_length * len(held))

    @property
    def fingerprint(self) -> str:
        """Short hash of everything that decides this method's outputs (not its name)."""
        config = None
        if self.config:
            # The first release's fields always count; fields added since count only away from their default
            # (which keeps the old behaviour), so results recorded before they existed still resume.
            defaults = {f.name: f.default for f in dataclasses.fields(SPTSConfig)}
            config = {
                k: v
                for k, v in self.config.to_dict().items()
                if k in _FIRST_FIELDS or (k != "name" and v != defaults[k])
            }
        payload: dict[str, Any] = {"config": config, "selection": self.selection}
        if self.peer is not None:  # only then, so that every other method keeps its recorded fingerprint
            payload["peer"] = self.peer.describe()
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


_FIRST_FIELDS = frozenset(
    ("start_layer", "stage_boundaries", "budgets", "delta", "probe_tokens", "pool_kernel", "skip_attention",
     "skip_ffn", "prune")
)  # fmt: skip
