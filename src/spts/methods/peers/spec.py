"""Peer methods named on the command line: ``gemfilter[@keep][:L<layer>]``, ``fastkv[@keep][:L<layer>]``,
``lazyllm[@scale]``.

``keep`` is a token count (an integer, ``@1024``) or a fraction of the prompt (``@0.1``); ``:L<layer>`` picks
GemFilter's filter layer or FastKV's TSP layer; ``scale`` multiplies LazyLLM's kept fractions. Left out, each
takes its paper's default, layers scaled to the model's depth (docs/peers.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from spts.adapters import adapter_for
from spts.config import Budget, SPTSConfig
from spts.methods.peers.base import PeerPrefill, format_keep, num_layers_of
from spts.methods.peers.fastkv import fastkv_config
from spts.methods.peers.gemfilter import GemFilter
from spts.methods.peers.lazyllm import lazyllm_config
from spts.runtime.checks import check_model

PEERS = ("gemfilter", "fastkv", "lazyllm")
SYNTAX = "gemfilter[@<keep>][:L<layer>], fastkv[@<keep>][:L<layer>], lazyllm[@<scale>]"
_SPEC = re.compile(r"(?P<kind>gemfilter|fastkv|lazyllm)(?:@(?P<value>[^:]*))?(?::(?P<option>.*))?")


@dataclass(frozen=True)
class PeerSpec:
    """A parsed peer spec; None fields take the paper's defaults."""

    kind: str
    value: Budget | None = None  # keep (gemfilter, fastkv) or scale (lazyllm)
    layer: int | None = None

    @property
    def name(self) -> str:
        """The spec written canonically (``gemfilter@0.10`` is ``gemfilter@0.1``)."""
        if self.value is None:
            value = ""
        else:
            value = f"@{self.value:g}" if self.kind == "lazyllm" else f"@{format_keep(self.value)}"
        return f"{self.kind}{value}{'' if self.layer is None else f':L{self.layer}'}"


def parse_peer_spec(spec: str) -> PeerSpec | None:
    """The peer a spec names, None when it names none; a ValueError for a malformed peer spec."""
    match = _SPEC.fullmatch(spec.strip())
    if match is None:
        return None
    kind, value, option = match["kind"], match["value"], match["option"]
    layer = None
    if option is not None:
        if kind == "lazyllm":
            raise ValueError(f"method {spec!r}: lazyllm takes no layer; its pruning layers follow the model's depth")
        if not re.fullmatch(r"L\d+", option):
            raise ValueError(f"method {spec!r}: the layer after ':' must be L<index>, e.g. {kind}@0.1:L13")
        layer = int(option[1:])
    if value is None:
        return PeerSpec(kind, None, layer)
    if kind == "lazyllm":
        try:
            scale = float(value)
        except ValueError:
            scale = float("nan")
        if not scale > 0:
            raise ValueError(f"method {spec!r}: the scale after '@' must be a positive number, e.g. lazyllm@0.5")
        return PeerSpec(kind, scale)
    return PeerSpec(kind, _keep(spec, value), layer)


def _keep(spec: str, value: str) -> Budget:
    if re.fullmatch(r"\d+", value):
        keep: Budget = int(value)
    else:
        try:
            keep = float(value)
        except ValueError:
            keep = float("nan")
    if not keep > 0 or (isinstance(keep, float) and keep > 1):
        raise ValueError(
            f"method {spec!r}: keep after '@' must be a token count >= 1 (e.g. @1024) or a fraction of the prompt "
            "in (0, 1] (e.g. @0.1)"
        )
    return keep


def build_peer(spec: PeerSpec, model: nn.Module | None) -> tuple[SPTSConfig | None, PeerPrefill | None]:
    """What runs the peer on ``model``: an SPTS config (fastkv, lazyllm) or a prefill of its own (gemfilter).
    Checked against the model: its family, its layer count, the layer asked for."""
    if model is None:
        raise ValueError(
            f"method {spec.name!r} needs the model (its layer count sets the paper's layers): pass model= to "
            "resolve_methods"
        )
    num_layers = num_layers_of(model)  # an unsupported family raises here, naming the supported ones
    if spec.kind == "gemfilter":
        return None, GemFilter.for_model(model, spec.value, spec.layer)
    if spec.kind == "fastkv":
        config = fastkv_config(num_layers, spec.value, spec.layer)
    else:
        config = lazyllm_config(num_layers, 1.0 if spec.value is None else float(spec.value))
    check_model(adapter_for(model), config, model)  # refused now (sliding window, ...) rather than mid-run
    return config, None
