"""``tune(model, tokenizer, ...)``: search an SPTS schedule for one model on this machine (``spts tune``)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from spts.config import SPTSConfig
from spts.runtime.engine import ffn_scorer, is_enabled
from spts.tasks.prompts import PromptRenderer
from spts.tuning import report
from spts.tuning.objective import ANSWER_TOKENS, reference_run, score_config
from spts.tuning.prompts import DEFAULT_TASKS, CalibrationPrompt, file_prompts, generated_prompts
from spts.tuning.search import Target, TrialStore, check_run, ranking, successive_halving
from spts.tuning.space import Grid, behaviour, build_grid, fingerprint, parse_space, subsample
from spts.tuning.sparse_speed import densities_for, measure_densities
from spts.tuning.speed import SpeedModel, kv_fraction
from spts.tuning.timing import load_or_measure, measure_speedups


class TuneError(ValueError):
    """The search cannot produce what was asked (e.g. no config of the space reaches the speedup target)."""


@dataclass(frozen=True)
class TuneSettings:
    """What to search for and on what; validated on construction. Exactly one target must be given."""

    target_speedup: float | None = None
    min_fidelity: float | None = None
    prompts: int = 8
    length: int = 4096
    seed: int = 0
    space: Sequence[str] | Mapping[str, Sequence[Any]] = ()
    max_configs: int = 256
    prompt_file: str | os.PathLike | None = None
    tasks: Sequence[str] = DEFAULT_TASKS
    answer_tokens: int = ANSWER_TOKENS
    min_survivors: int = 4
    measure: int = 3
    """How many of the best configs get timed prefills (full vs config); 0: none."""
    measure_repeats: int = 3
    speed_repeats: int = 5

    def __post_init__(self) -> None:
        if (self.target_speedup is None) == (self.min_fidelity is None):
            raise ValueError("give exactly one target: target_speedup (e.g. 1.5) or min_fidelity (e.g. 0.95)")
        if self.target_speedup is not None and not self.target_speedup >= 1.0:
            raise ValueError(f"target_speedup must be at least 1.0 (the full model), got {self.target_speedup}")
        if self.min_fidelity is not None and not 0.0 < self.min_fidelity <= 1.0:
            raise ValueError(f"min_fidelity must be in (0, 1], got {self.min_fidelity}")
        for name, minimum in (
            ("prompts", 1),
            ("length", 16),
            ("max_configs", 1),
            ("answer_tokens", 1),
            ("min_survivors", 1),
            ("measure", 0),
            ("measure_repeats", 1),
            ("speed_repeats", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")  # fmt: skip
        parse_space(self.space)  # raises for an unknown field or a malformed spec

    @property
    def target(self) -> Target:
        if self.target_speedup is not None:
            return Target("speedup", float(self.target_speedup))
        return Target("fidelity", float(self.min_fidelity))  # type: ignore[arg-type]

    def call(self) -> str:
        """These settings as the Python call that reproduces them."""
        changed = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if getattr(self, f.name) != f.default]
        return f"spts.tuning.tune(model, tokenizer, {', '.join(changed)})"


@dataclass(frozen=True)
class TuneResult:
    config: SPTSConfig
    fidelity: float
    predicted_speedup: float
    measured_speedup: float | None
    target_met: bool
    out_dir: Path
    summary: dict[str, Any] = field(compare=False, repr=False)

    @property
    def path(self) -> Path:
        """``tuned.json``: load it with ``spts.enable(model, path)``."""
        return self.out_dir / report.TUNED_FILE


def tune(
    model: nn.Module,
    tokenizer: Any,
    out: str | os.PathLike = "runs/tune",
    *,
    settings: TuneSettings | None = None,
    proxies: Any = None,
    speed_model: SpeedModel | None = None,
    model_name: str | None = None,
    command: str | None = None,
    progress: bool = True,
    **options: Any,
) -> TuneResult:
    """Search an SPTS schedule for ``model`` on this machine; write ``tuned.json`` and reports to ``out``.

    Options are :class:`TuneSettings` fields (``target_speedup=1.5`` or ``min_fidelity=0.95``, ``prompts``,
    ``length``, ``seed``, ``space``, ``max_configs``, ``prompt_file``, ...), or pass ``settings``. ``proxies``: LTP
    proxies (object or file) or an FFN scorer, as for :func:`spts.enable`. ``speed_model``: use this instead of
    timing the model (else measured once and cached in ``out``). An interrupted search resumes from ``out``.
    """
    settings = settings or TuneSettings(**options)
    if is_enabled(model):
        raise ValueError("tune the unmodified model: call spts.disable(model) first")
    out_dir = Path(out)
    num_layers = model.config.num_hidden_layers
    prompts = _calibration_prompts(model, tokenizer, settings)
    proxies = _load_proxies(proxies)
    policy = _ffn_policy(proxies)
    out_dir.mkdir(parents=True, exist_ok=True)
    parameter = next(model.parameters())
    name = model_name or getattr(model.config, "_name_or_path", None) or model.config.model_type
    run = {"model": name, "ffn_policy": policy, "dtype": str(parameter.dtype), "answer_tokens": settings.answer_tokens}
    check_run(out_dir, run)
    scorers = _Scorers(model, proxies)
    needs_inputs = bool(getattr(scorers.last_layer(), "needs_inputs", False))
    grid = build_grid(num_layers, parse_space(settings.space))
    # Block-sparse attention's speed depends on the text: its density per layer is measured on the first prompt.
    sparse_block = next((c.sparse_block for c in grid.configs if c.sparse_from is not None), None)
    speed_source = "given"
    if speed_model is None:
        speed_model, cached = load_or_measure(
            out_dir, model, settings.length, scorers.last_layer(), policy, settings.speed_repeats, sparse_block
        )
        speed_source = "cached" if cached else "measured"
    device = next(model.parameters()).device
    densities = measure_densities(model, grid.configs, prompts[0].input_ids.to(device)) if sparse_block else {}
    predicted = {
        fingerprint(c): speed_model.speedup(c, settings.length, needs_inputs, densities_for(c, densities))
        for c in grid.configs
    }
    target = settings.target
    candidates = _meeting_target(grid, predicted, target, settings.length, num_layers)
    configs = {fingerprint(c): c for c in subsample(candidates, settings.max_configs, settings.seed)}

    store = TrialStore(out_dir)
    bar = tqdm(total=0, desc="tune", unit="trial", disable=not progress)

    def evaluate(fps: Sequence[str], upto: int) -> dict[str, Any]:
        seen = prompts[:upto]
        bar.total += sum((fp, p.prompt_id) not in store.trials for fp in fps for p in seen)
        bar.refresh()
        for prompt in seen:
            pending = [fp for fp in fps if (fp, prompt.prompt_id) not in store.trials]
            _score_prompt(model, tokenizer, prompt, pending, configs, scorers, store, settings.answer_tokens, bar)
        return {fp: store.aggregate(fp, [p.prompt_id for p in seen]) for fp in fps}

    rungs = successive_halving(
        list(configs), len(prompts), evaluate, ranking(target, predicted), settings.min_survivors,
        most_faithful_survives=target.kind == "fidelity",
    )  # fmt: skip
    bar.close()
    chosen_fp = rungs[-1].fingerprints[0]
    chosen_aggregate = store.aggregate(chosen_fp, [p.prompt_id for p in prompts[: rungs[-1].prompts]])
    target_met = target.kind == "speedup" or chosen_aggregate.fidelity >= target.value
    sparse_ids = prompts[0].input_ids if sparse_block else None  # sparse speed needs text, not random tokens
    timed = _measure(model, settings, rungs[-1].fingerprints[: settings.measure], configs, scorers, store, sparse_ids)

    latest: dict[str, dict[str, Any]] = {}  # each config at the last rung it reached, best first per rung
    for rung in reversed(rungs):
        for fp in (fp for fp in rung.fingerprints if fp not in latest):
            latest[fp] = {
                **asdict(store.aggregate(fp, [p.prompt_id for p in prompts[: rung.prompts]])),
                "config": behaviour(configs[fp]),
                "description": report.describe(configs[fp]),
                "predicted_speedup": predicted[fp],
                "kv_fraction": kv_fraction(configs[fp], num_layers, settings.length),
                "measured": timed.get(fp),
            }
    summary = report.build_summary(
        model_name=name,
        command=command or settings.call(),
        settings=settings,
        target=target,
        device=str(parameter.device),
        dtype=str(parameter.dtype),
        ffn_policy=policy,
        prompts=[{"prompt_id": p.prompt_id, "tokens": p.length, "source": p.source,
                  "answer": store.references.get(p.prompt_id, {}).get("answer")} for p in prompts],
        space={"explicit": {k: list(v) for k, v in parse_space(settings.space).items()}, "valid": len(grid.configs),
               "invalid": grid.invalid, "duplicates": grid.duplicates, "meeting_target": len(candidates),
               "searched": len(configs)},
        rungs=[{"prompts": r.prompts, "configs": len(r.fingerprints)} for r in rungs],
        configs=list(latest.values()),
        chosen=chosen_fp,
        target_met=target_met,
        speed_model={"source": speed_source, **speed_model.to_dict(),
                     **({"sparse_densities": {str(k): v for k, v in densities.items()}} if densities else {})},
    )  # fmt: skip
    chosen = configs[chosen_fp].with_(name=f"tuned-{chosen_fp}")
    report.write_outputs(out_dir, summary, chosen, model)
    return TuneResult(
        config=chosen,
        fidelity=chosen_aggregate.fidelity,
        predicted_speedup=predicted[chosen_fp],
        measured_speedup=(timed.get(chosen_fp) or {}).get("measured_speedup"),
        target_met=target_met,
        out_dir=out_dir,
        summary=summary,
    )


def _calibration_prompts(model: nn.Module, tokenizer: Any, settings: TuneSettings) -> list[CalibrationPrompt]:
    """The prompts to tune on, checked against the model's context window (with room for the answer)."""
    window = getattr(model.config, "max_position_embeddings", None)
    if isinstance(window, int) and settings.length > window:
        raise ValueError(f"length {settings.length} is beyond the model's context window of {window} tokens")
    renderer = PromptRenderer(tokenizer, max_prompt_tokens=settings.length if settings.prompt_file else None)
    if settings.prompt_file is not None:
        prompts = file_prompts(renderer, settings.prompt_file, settings.prompts)
    else:
        prompts = generated_prompts(renderer, settings.prompts, settings.length, settings.seed, settings.tasks)
    too_long = [p.prompt_id for p in prompts if isinstance(window, int) and p.length + settings.answer_tokens > window]
    if too_long:
        raise ValueError(f"prompts {too_long} with their answer exceed the context window of {window} tokens")
    return prompts


def _meeting_target(
    grid: Grid, predicted: dict[str, float], target: Target, length: int, num_layers: int
) -> list[SPTSConfig]:
    """The valid configs, less those predicted below a speedup target; an error when none is left."""
    if not grid.configs:
        raise TuneError(
            f"the search space holds no valid config for this {num_layers}-layer model ({grid.invalid} combinations "
            "are not valid configs); check --space"
        )
    if target.kind != "speedup":
        return list(grid.configs)
    meeting = [c for c in grid.configs if predicted[fingerprint(c)] >= target.value]
    if not meeting:
        fastest = max(grid.configs, key=lambda c: predicted[fingerprint(c)])
        raise TuneError(
            f"no config of the search space is predicted to reach a {target.value:g}x TTFT speedup at {length} "
            f"tokens (the fastest is {predicted[fingerprint(fastest)]:.2f}x: {report.describe(fastest)}); lower "
            "--target-speedup or widen --space"
        )
    return meeting


def _score_prompt(model, tokenizer, prompt: CalibrationPrompt, pending, configs, scorers, store, answer_tokens, bar):
    """Score the ``pending`` configs on one prompt: one full-model reference run (recording the layers below the
    deepest start layer among them), then each config's replayed prefill and teacher-forced answer."""
    if not pending:
        return
    device = next(model.parameters()).device
    depth = max(configs[fp].start_layer for fp in pending)
    reference = reference_run(model, tokenizer, prompt.prompt_id, prompt.input_ids.to(device), depth, answer_tokens)
    recorded = store.references.get(prompt.prompt_id)
    if recorded is None:
        store.append({**reference.to_row(), "source": prompt.source})
    else:
        # Resuming: score against the answer the earlier trials were scored against.
        reference.answer_ids, reference.full_logprobs = recorded["answer_ids"], recorded["full_logprobs"]
    for fp in pending:
        bar.set_postfix_str(f"{prompt.source} {fp}")
        score = score_config(model, reference, configs[fp], scorers(configs[fp]))
        store.append(
            {
                "kind": "trial",
                "fingerprint": fp,
                "prompt_id": prompt.prompt_id,
                "config": behaviour(configs[fp]),
                "answer_tokens": len(score.matches),
                "first_match": score.first_match,
                "fidelity": score.fidelity,
                "logprob_gap": score.logprob_gap(reference.full_logprobs),
                "matches": list(score.matches),
                "logprobs": list(score.logprobs),
                "kv_tokens": score.kv_tokens,
            }
        )
        bar.update()


def _measure(
    model, settings: TuneSettings, fps, configs, scorers, store: TrialStore, ids: Any = None
) -> dict[str, dict[str, float]]:
    """Timed prefills (full vs config) of the given configs, cached in the trial store."""
    todo = [fp for fp in fps if (fp, settings.length) not in store.timings]
    if todo:
        measured = measure_speedups(
            model,
            settings.length,
            {fp: configs[fp] for fp in todo},
            {fp: scorers(configs[fp]) for fp in todo},
            settings.measure_repeats,
            settings.seed,
            ids,
        )
        for fp, values in measured.items():
            store.append({"kind": "timing", "fingerprint": fp, "length": settings.length, **values,
                          "repeats": settings.measure_repeats})  # fmt: skip
    return {fp: store.timings[(fp, settings.length)] for fp in fps}


class _Scorers:
    """FFN scorers built once per range of skipping layers (LTP proxies are checked and moved once)."""

    def __init__(self, model: nn.Module, proxies: Any) -> None:
        self.model, self.proxies = model, proxies
        self._built: dict[tuple[int, int | None], Any] = {}

    def __call__(self, config: SPTSConfig) -> Any:
        if self.proxies is None:
            return None
        key = (config.start_layer, config.end_layer)
        if key not in self._built:
            self._built[key] = ffn_scorer(self.model, config, self.proxies)
        return self._built[key]

    def last_layer(self) -> Any:
        """The scorer of a config that skips only the last layer (what the speed model times)."""
        return self(
            SPTSConfig(start_layer=self.model.config.num_hidden_layers - 1, stage_boundaries=(), budgets=(1.0,))
        )


def _load_proxies(proxies: Any) -> Any:
    if isinstance(proxies, str | os.PathLike):
        from spts.calibration.proxy_file import load_proxies

        return load_proxies(proxies)
    return proxies


def _ffn_policy(proxies: Any) -> str:
    if proxies is None:
        return "attention score"
    meta = getattr(proxies, "meta", None)
    if meta is not None:
        return f"LTP ({meta.variant}, d_low={meta.d_low}, rank={meta.rank})"
    return type(proxies).__name__
