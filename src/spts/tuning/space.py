"""The search space of ``spts tune``: which SPTS configs it tries for one model.

A coarse grid over the schedule (start layer; where skipping ends, leaving a tail of full layers or none; number and
position of stage boundaries; per-stage budgets as fractions of the prompt; the pruning margin ``delta``; the
probe's pooling kernel), scaled to the model's depth.
Any :class:`SPTSConfig` field can be given explicit values (``--space field=v1,v2``): a schedule field replaces
that part of the grid, any other field becomes one more dimension. Configs are built with ``SPTSConfig(**fields)``
so fields added to SPTSConfig later are searchable without changes here; combinations the config refuses
(``ValueError``) are skipped and counted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from spts.config import SPTSConfig

# Relative depths of the first skipping layer. The paper starts at ~1/3 of a 7-8B model; small models retrieve
# deeper (SmolLM2-135M from layer 17 of 30, docs/tuning.md), so the grid reaches to 70% of the depth.
START_FRACTIONS = (0.25, 0.4, 0.55, 0.7)
# (number of stage boundaries, share of the skipping layers they are spread over): the paper's 3-4 evenly
# spaced stages, fewer stages, and early pruning (all boundaries in the first half of the skipping layers).
LAYOUTS = ((1, 1.0), (2, 1.0), (3, 1.0), (2, 0.5))
# The first stage keeps this share of the prompt; each later stage keeps ``decay`` times the previous one.
FIRST_BUDGETS = (0.5, 0.3, 0.15)
BUDGET_DECAYS = (0.5, 0.75)
DELTAS = (0.0, 0.05)
POOL_KERNELS = (1, 13)
# Share of the depth that runs in full again at the end (``end_layer``): none (the paper), or the last sixth. The
# small models here build their answer in the last layers over every token: skipping there at small budgets garbles
# answers that skipping the same budgets in the middle keeps (docs/tuning.md, "the last layers").
TAIL_FRACTIONS = (0.0, 1 / 6)

# Fields whose values the grid derives itself; --space values for them replace the derived ones.
SCHEDULE_FIELDS = ("start_layer", "stage_boundaries", "budgets", "delta", "pool_kernel", "end_layer")


def config_fields() -> dict[str, dataclasses.Field]:
    """SPTSConfig's fields a search may set (``name`` is a label, not behaviour)."""
    return {f.name: f for f in dataclasses.fields(SPTSConfig) if f.name != "name"}


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def behaviour(config: SPTSConfig) -> dict[str, Any]:
    """The fields that decide what ``config`` computes, leaving out those at their defaults, so that a field
    added to SPTSConfig later (with a default that keeps the old behaviour) does not change fingerprints."""
    fields = config_fields()
    out = {}
    for name, value in config.to_dict().items():
        if name in fields and value != _default_of(fields[name]):
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def fingerprint(config: SPTSConfig) -> str:
    """Short hash of what ``config`` computes (not its name); the key of its trials."""
    payload = json.dumps(behaviour(config), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def describe(config: SPTSConfig) -> str:
    """One line: the schedule, then every other field that differs from its default."""
    shown = behaviour(config)

    def seq(values: Iterable[Any]) -> str:
        return "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) or "-"

    parts = [
        f"start {config.start_layer}",
        f"boundaries {seq(config.stage_boundaries)}",
        f"budgets {seq(config.budgets)}",
        f"delta {config.delta:g}" if isinstance(config.delta, float) else f"delta {config.delta}",
        f"pool {config.pool_kernel}",
    ]
    if config.end_layer is not None:
        parts.append(f"full from {config.end_layer}")
    parts += [f"{k}={v}" for k, v in shown.items() if k not in SCHEDULE_FIELDS]
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------- --space values
def _scalar(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_value(text: str) -> Any:
    """One ``--space`` value: ``none``, ``true``/``false``, an int, a float, a tuple ``a:b:c`` (``()`` is the
    empty tuple), or else the text itself."""
    text = text.strip()
    if text == "()":
        return ()
    if ":" in text:
        return tuple(_scalar(part) for part in text.split(":"))
    return _scalar(text)


def parse_space(specs: Sequence[str] | Mapping[str, Sequence[Any]] | None) -> dict[str, tuple[Any, ...]]:
    """Explicit dimensions from ``["field=v1,v2", ...]`` (the command line) or ``{field: [v1, v2]}`` (Python).

    Raises ValueError for a malformed spec, a field SPTSConfig does not have, a field given twice, or no values.
    """
    fields = config_fields()
    if specs is None:
        return {}
    if isinstance(specs, Mapping):
        items = [(str(k), tuple(v) if isinstance(v, list | tuple) else (v,)) for k, v in specs.items()]
    else:
        items = []
        for spec in specs:
            name, sep, values = spec.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"--space {spec!r}: expected field=value1,value2 (e.g. start_layer=14,17,20)")
            parsed = tuple(parse_value(v) for v in values.split(",") if v.strip())
            items.append((name.strip(), parsed))
    space: dict[str, tuple[Any, ...]] = {}
    for name, values in items:
        if name not in fields:
            raise ValueError(
                f"--space: SPTSConfig has no field {name!r}; searchable fields: {', '.join(sorted(fields))}"
            )
        if name in space:
            raise ValueError(f"--space: field {name!r} given twice; list all its values once: {name}=a,b,c")
        if not values:
            raise ValueError(f"--space {name}=: give at least one value")
        if "tuple" in str(fields[name].type):  # a one-element schedule given as a plain value: budgets=0.3
            values = tuple(v if isinstance(v, tuple) else (v,) for v in values)
        space[name] = values
    return space


# ---------------------------------------------------------------------------------------------- the grid
def default_starts(num_layers: int) -> tuple[int, ...]:
    starts = (min(num_layers - 2, max(1, round(f * num_layers))) for f in START_FRACTIONS)
    return tuple(sorted(set(s for s in starts if s >= 1)))


def default_ends(num_layers: int) -> tuple[int | None, ...]:
    """``end_layer`` values of the default grid: None (skip to the last layer) and a full tail per TAIL_FRACTIONS."""
    tails = sorted({round(f * num_layers) for f in TAIL_FRACTIONS})
    return tuple(num_layers - t if t else None for t in tails)


def layout_boundaries(start: int, num_layers: int, n_boundaries: int, span: float) -> tuple[int, ...] | None:
    """``n_boundaries`` stage boundaries evenly spaced over the first ``span`` of layers ``[start, num_layers)``
    (``num_layers``: where skipping ends); None when they do not fit as distinct layers."""
    width = span * (num_layers - start)
    boundaries = tuple(start + round((i + 1) * width / (n_boundaries + 1)) for i in range(n_boundaries))
    valid = all(start < b < num_layers for b in boundaries) and len(set(boundaries)) == n_boundaries
    return boundaries if valid else None


def budget_schedule(n_stages: int, first: float, decay: float) -> tuple[float, ...]:
    return tuple(round(max(0.01, first * decay**i), 4) for i in range(n_stages))


@dataclass(frozen=True)
class Grid:
    """The configs of a search space for one model: valid ones in grid order, and how many were refused."""

    configs: tuple[SPTSConfig, ...]
    invalid: int
    duplicates: int


def build_grid(num_layers: int, space: Mapping[str, Sequence[Any]] | None = None) -> Grid:
    """Every valid config of the default grid for a model of ``num_layers`` layers, with ``space``'s explicit
    values replacing (schedule fields) or extending (any other field) it. Deterministic order."""
    space = dict(space or {})
    starts = tuple(space.pop("start_layer", default_starts(num_layers)))
    explicit_boundaries = space.pop("stage_boundaries", None)
    explicit_budgets = space.pop("budgets", None)
    deltas = tuple(space.pop("delta", DELTAS))
    pools = tuple(space.pop("pool_kernel", POOL_KERNELS))
    ends = tuple(space.pop("end_layer", default_ends(num_layers)))
    extra_names = list(space)
    extra_values = [tuple(space[name]) for name in extra_names]

    def as_tuple(value: Any) -> Any:
        return value if isinstance(value, tuple) else (value,)

    configs: dict[str, SPTSConfig] = {}
    invalid = duplicates = 0
    for start, end in itertools.product(starts, ends):
        if explicit_boundaries is not None:
            layouts = [as_tuple(b) for b in explicit_boundaries]
        else:
            stop = num_layers if end is None else end
            layouts = [b for n, span in LAYOUTS if (b := layout_boundaries(start, stop, n, span)) is not None]
            invalid += len(LAYOUTS) - len(layouts)
        for boundaries in layouts:
            if explicit_budgets is not None:
                budget_options = [as_tuple(b) for b in explicit_budgets]
            else:
                n_stages = len(boundaries) + 1
                budget_options = list(
                    dict.fromkeys(budget_schedule(n_stages, f, d) for f in FIRST_BUDGETS for d in BUDGET_DECAYS)
                )
            for budgets, delta, pool, *extras in itertools.product(budget_options, deltas, pools, *extra_values):
                fields = dict(
                    start_layer=start, stage_boundaries=boundaries, budgets=budgets, delta=delta, pool_kernel=pool,
                    end_layer=end,
                )  # fmt: skip
                fields.update(zip(extra_names, extras, strict=True))
                try:
                    config = SPTSConfig(**fields)
                    config.validate_for(num_layers)
                except (ValueError, TypeError):
                    invalid += 1  # the config refuses this combination: not a point of the space
                    continue
                key = fingerprint(config)
                if key in configs:
                    duplicates += 1
                    continue
                configs[key] = config.with_(name=f"tune-{key}")
    return Grid(tuple(configs.values()), invalid, duplicates)


def subsample(configs: Sequence[SPTSConfig], limit: int, seed: int) -> list[SPTSConfig]:
    """At most ``limit`` of ``configs``: a seeded random subset, kept in grid order."""
    if len(configs) <= limit:
        return list(configs)
    keep = sorted(random.Random(f"spts-tune/{seed}").sample(range(len(configs)), limit))
    return [configs[i] for i in keep]
