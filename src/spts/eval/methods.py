"""The methods an evaluation compares: the full model, SPTS at chosen budgets, and its ablations.

A method is a name plus what :func:`spts.enable` needs (or nothing, for the full model). Methods are
named on the command line by short specs, resolved against a base SPTS config:

* ``full``: the unmodified model;
* ``spts``: the base config; ``spts@0.5``: its budgets scaled by 0.5 (any factor > 0);
* ``pap``: attention probing only (FFN runs on every candidate, no pruning);
* ``pap+ffn``: PAP and FFN skipping, no pruning (``spts`` adds MSDP);
* ``ceiling``: the base schedule with random selection (the speed bound; not meant to answer well);
* selection variants appended to ``spts`` or ``spts@<scale>`` with ``+``: ``+kvc`` (KV-complete skipping),
  ``+cache`` (skipped candidates cached for decoding),
  ``+max`` (max over heads), ``+sinks<S>`` / ``+recent<R>`` (protected first S / last R tokens), ``+acc``
  (scores accumulated over a stage), ``+window<W>`` (the last W tokens probe), e.g. ``spts@2+kvc+recent64``;
* ``file:<path>`` or a path ending in ``.json``: a config file (``spts tune``'s ``tuned.json``, or
  ``SPTSConfig.to_file``), named after the file (``runs/tune/tuned.json`` is ``tuned``); ``<name>=<path>`` names
  it yourself, e.g. ``tuned15=runs/tune15/tuned.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spts.config import SPTSConfig
from spts.config_file import load_config


@dataclass(frozen=True)
class Method:
    name: str
    config: SPTSConfig | None = None
    """None runs the unmodified model."""
    selection: str = "probe"

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
        payload = {"config": config, "selection": self.selection}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


_FIRST_FIELDS = frozenset(
    ("start_layer", "stage_boundaries", "budgets", "delta", "probe_tokens", "pool_kernel", "skip_attention",
     "skip_ffn", "prune")
)  # fmt: skip


def scale_budgets(config: SPTSConfig, factor: float) -> SPTSConfig:
    """``config`` with every stage budget scaled by ``factor`` (fractions capped at the whole prompt)."""
    if not factor > 0:
        raise ValueError(f"budget scale must be positive, got {factor}")
    budgets = tuple(min(1.0, b * factor) if isinstance(b, float) else max(1, round(b * factor)) for b in config.budgets)
    return config.with_(budgets=budgets, name=f"{config.name}@{factor:g}")


_VARIANT_FLAGS = {
    "kvc": {"kv_complete": True},
    "cache": {"cache_skipped": True},
    "max": {"head_aggregation": "max"},
    "acc": {"accumulate_scores": True},
}
_VARIANT_COUNTS = {"sinks": "sink_tokens", "recent": "recent_tokens", "window": "probe_tokens"}


def _variant_changes(spec: str, variant: str) -> dict:
    if variant in _VARIANT_FLAGS:
        return _VARIANT_FLAGS[variant]
    for prefix, field in _VARIANT_COUNTS.items():
        count = variant.removeprefix(prefix)
        if variant.startswith(prefix) and count.isdigit():
            return {field: int(count)}
    raise ValueError(
        f"method {spec!r}: unknown selection variant {variant!r}; "
        "use kvc, cache, max, acc, sinks<N>, recent<N> or window<N>"
    )


def _file_method(spec: str, model: Any) -> Method | None:
    """The method of a config-file spec, or None when ``spec`` names no file."""
    name, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
    if not (path.startswith("file:") or path.endswith(".json")):
        return None
    if name and not re.fullmatch(r"[\w.@-]+", name):
        raise ValueError(
            f"method {spec!r}: a config file's name before '=' may use letters, digits, '_', '.', '@', '-'"
        )
    path = path.removeprefix("file:")
    return Method(name or Path(path).stem, load_config(path, model))


def resolve_method(spec: str, base: SPTSConfig, model: Any = None) -> Method:
    """The method a spec names (see the module docstring); ``model`` checks config files against it."""
    spec = spec.strip()
    from_file = _file_method(spec, model)
    if from_file is not None:
        return from_file
    if "+" in spec and spec.split("+")[0].partition("@")[0] == "spts":
        head, *variants = spec.split("+")
        method = resolve_method(head, base)
        changes: dict = {}
        for variant in variants:
            changes.update(_variant_changes(spec, variant))
        assert method.config is not None
        config = method.config.with_(**changes, name=f"{method.config.name}+{'+'.join(variants)}")
        return Method("+".join([method.name, *variants]), config)
    if spec == "full":
        return Method("full")
    if spec == "spts":
        return Method("spts", base)
    if spec == "pap":
        return Method("pap", base.with_(skip_ffn=False, prune=False))
    if spec == "pap+ffn":
        return Method("pap+ffn", base.with_(prune=False))
    if spec == "ceiling":
        return Method("ceiling", base, selection="random")
    if spec.startswith("spts@"):
        try:
            factor = float(spec.removeprefix("spts@"))
        except ValueError:
            factor = float("nan")
        if not factor > 0:
            raise ValueError(f"method {spec!r}: the budget scale after '@' must be a positive number, e.g. spts@0.5")
        return Method(f"spts@{factor:g}", scale_budgets(base, factor))
    raise ValueError(
        f"unknown method {spec!r}; use full, spts, spts@<scale>, pap, pap+ffn, ceiling, spts[@<scale>]+<variant>, "
        "or a config file (file:<path>, <path>.json or <name>=<path>.json)"
    )


def resolve_methods(specs: str | list[str], base: SPTSConfig, model: Any = None) -> list[Method]:
    """Methods for comma-separated specs, in order; names must be unique (config files are checked against
    ``model`` when it is given)."""
    if isinstance(specs, str):
        specs = [s for s in specs.split(",") if s.strip()]
    methods = [resolve_method(s, base, model) for s in specs]
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"methods repeat a name: {', '.join(names)}")
    if not methods:
        raise ValueError("no methods given")
    return methods
