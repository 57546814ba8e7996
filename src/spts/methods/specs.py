"""Methods by name: the short specs that ``spts eval``, ``spts bench`` and the tuner take, resolved against a
base SPTS config:

* ``full``: the unmodified model;
* ``spts``: the base config; ``spts@0.5``: its budgets scaled by 0.5 (any factor > 0);
* ``derived``: the paper's schedule carried to the model's depth and context (:meth:`SPTSConfig.for_model`), what
  a user without a preset or a tuned schedule starts from (needs the model);
* ``pap``: attention probing only (FFN runs on every candidate, no pruning);
* ``pap+ffn``: PAP and FFN skipping, no pruning (``spts`` adds MSDP);
* ``ceiling``: the base schedule with random selection (the speed bound; not meant to answer well);
* selection variants appended to ``spts`` or ``spts@<scale>`` with ``+``: ``+kvc`` (KV-complete skipping),
  ``+cache`` (skipped candidates cached for decoding),
  ``+max`` (max over heads), ``+sinks<S>`` / ``+recent<R>`` (protected first S / last R tokens), ``+acc``
  (scores accumulated over a stage), ``+window<W>`` (the last W tokens probe), ``+view<T>`` (the last T tokens
  attend over the whole prompt in every skipping layer), e.g. ``spts@2+kvc+recent64``;
* block-sparse attention (docs/sparse.md): ``+sparse<threshold>[:L<from>[-<to>]][:Q<tokens>][:H]`` appended to an
  SPTS spec makes the attention of layers ``[from, to)`` block-sparse (default: from 0 up to the start layer, the
  layers that run in full), the query blocks of the last ``tokens`` tokens dense (default 0), ``:H`` the threshold
  per query head, e.g. ``spts+sparse0.9``, ``spts+sparse0.95:L2``, ``spts+sparse0.9:Q256``, ``spts+sparse0.8:H``;
  alone, ``sparse<threshold>[...]`` is the unmodified model with sparse attention (default: every layer; needs the
  model), e.g. ``sparse0.9``;
* ``file:<path>`` or a path ending in ``.json``: a config file (``spts tune``'s ``tuned.json``, or
  ``SPTSConfig.to_file``), named after the file (``runs/tune/tuned.json`` is ``tuned``); ``<name>=<path>`` names
  it yourself, e.g. ``tuned15=runs/tune15/tuned.json``; selection variants append to it as to ``spts``, e.g.
  ``tuned15=runs/tune15/tuned.json+window64`` (the name becomes ``tuned15+window64``);
* peer methods (:mod:`spts.methods.peers`, docs/peers.md), which need the model: ``gemfilter[@<keep>][:L<layer>]``
  (GemFilter: a filter layer picks ``keep`` tokens, the unmodified model reads only them),
  ``fastkv[@<keep>][:L<layer>]`` (FastKV's token-selective propagation past a layer) and ``lazyllm[@<scale>]``
  (LazyLLM-style progressive pruning); ``keep`` is a token count (``@1024``) or a fraction of the prompt
  (``@0.1``), e.g. ``gemfilter@0.1:L13``, ``fastkv@2048``, ``lazyllm@0.5``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from spts.config import SPTSConfig
from spts.methods.method import Method
from spts.methods.peers import SYNTAX as PEER_SYNTAX
from spts.methods.peers import build_peer, parse_peer_spec


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
_VARIANT_COUNTS = {
    "sinks": "sink_tokens",
    "recent": "recent_tokens",
    "window": "probe_tokens",
    "local": "local_window",
    "view": "full_view_tokens",
}


_SPARSE = re.compile(
    r"sparse(?P<threshold>[0-9.]+)(?::L(?P<first>\d+)(?:-(?P<stop>\d+))?)?(?::Q(?P<query>\d+))?(?P<per_head>:H)?"
)


def _sparse_changes(spec: str, variant: str) -> dict | None:
    """The config fields of a ``sparse<threshold>[:L<from>[-<to>]][:Q<tokens>][:H]`` spec, or None when ``variant``
    is not one."""
    match = _SPARSE.fullmatch(variant)
    if match is None:
        return None
    try:
        threshold = float(match["threshold"])
    except ValueError:
        threshold = float("nan")
    if not 0 < threshold <= 1:
        raise ValueError(f"method {spec!r}: the threshold after 'sparse' must be in (0, 1], e.g. sparse0.9")
    changes: dict = {"sparse_from": int(match["first"] or 0), "sparse_threshold": threshold}
    if match["stop"] is not None:
        changes["sparse_to"] = int(match["stop"])
    if match["query"] is not None:
        changes["sparse_query_tokens"] = int(match["query"])
    if match["per_head"]:
        changes["sparse_per_head"] = True
    return changes


def sparse_only(spec: str, model: Any) -> SPTSConfig:
    """The unmodified model with block-sparse attention: a schedule whose one skipping layer (the last) keeps every
    token, so it computes what the model does; sparse in every layer unless ``spec`` says otherwise."""
    if model is None:
        raise ValueError(f"method {spec!r} follows the model's depth; resolve it with the model")
    changes = _sparse_changes(spec, spec)
    assert changes is not None
    layers = int(model.config.num_hidden_layers)
    changes.setdefault("sparse_to", layers)
    base = SPTSConfig(layers - 1, (), (1.0,), skip_attention=False, skip_ffn=False, prune=False, name=spec)
    config = base.with_(**changes)
    config.validate_for(layers)
    return config


def _variant_changes(spec: str, variant: str) -> dict:
    sparse = _sparse_changes(spec, variant)
    if sparse is not None:
        return sparse
    if variant in _VARIANT_FLAGS:
        return _VARIANT_FLAGS[variant]
    for prefix, field in _VARIANT_COUNTS.items():
        count = variant.removeprefix(prefix)
        if variant.startswith(prefix) and count.isdigit():
            return {field: int(count)}
    raise ValueError(
        f"method {spec!r}: unknown selection variant {variant!r}; "
        "use kvc, cache, max, acc, sinks<N>, recent<N>, window<N>, local<N>, view<N> "
        "or sparse<threshold>[:L<from>[-<to>]][:Q<tokens>][:H]"
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
    return Method(name or Path(path).stem, SPTSConfig.from_file(path, model))


def resolve_method(spec: str, base: SPTSConfig, model: Any = None) -> Method:
    """The method a spec names (see the module docstring); ``model`` checks config files against it, and peers
    need it (their layers follow its depth)."""
    spec = spec.strip()
    from_file = _file_method(spec, model)
    if from_file is not None:
        return from_file
    head, *variants = spec.split("+")
    method = None
    if variants:
        method = resolve_method(head, base, model) if head.partition("@")[0] == "spts" else _file_method(head, model)
    if method is not None:
        changes: dict = {}
        for variant in variants:
            changes.update(_variant_changes(spec, variant))
        assert method.config is not None
        config = method.config.with_(**changes, name=f"{method.config.name}+{'+'.join(variants)}")
        return Method("+".join([method.name, *variants]), config)
    peer_spec = parse_peer_spec(spec)
    if peer_spec is not None:
        config, peer = build_peer(peer_spec, model)
        return Method(peer_spec.name, config, peer=peer)
    if _SPARSE.fullmatch(spec):
        return Method(spec, sparse_only(spec, model))
    if spec == "full":
        return Method("full")
    if spec == "spts":
        return Method("spts", base)
    if spec == "derived":
        if model is None:
            raise ValueError("method 'derived' follows the model's depth and context; resolve it with the model")
        return Method("derived", SPTSConfig.for_model(model))
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
        f"unknown method {spec!r}; use full, spts, spts@<scale>, derived, pap, pap+ffn, ceiling, "
        "spts[@<scale>]+<variant>, sparse<threshold>[:L<from>[-<to>]][:Q<tokens>][:H], "
        f"a config file (file:<path>, <path>.json or <name>=<path>.json), or a peer: {PEER_SYNTAX}"
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
