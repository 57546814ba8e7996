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
from spts.runtime.engine import is_enabled
from spts.tasks.prompts import PromptRenderer
from spts.tuning import holdout, report
from spts.tuning.objective import ANSWER_TOKENS
from spts.tuning.prompts import MAX_MISSES, CalibrationPrompt, answered_prompts, file_prompts, generated_prompts
from spts.tuning.quality import ANSWERED_MIN, OBJECTIVES, needs_score
from spts.tuning.scoring import Scorers, ffn_policy, full_score, load_proxies, score_prompts
from spts.tuning.search import Target, TrialStore, check_run, ranking, successive_halving
from spts.tuning.space import Grid, behaviour, build_grid, fingerprint, parse_space, subsample
from spts.tuning.sparse_speed import densities_for, measure_densities
from spts.tuning.speed import SpeedModel, kv_fraction
from spts.tuning.timing import load_or_measure, measure_configs


class TuneError(ValueError):
    """The search cannot produce what was asked (e.g. no config of the space reaches the speedup target)."""


@dataclass(frozen=True)
class TuneSettings:
    """What to search for and on what; validated on construction. Exactly one target must be given."""

    target_speedup: float | None = None
    min_fidelity: float | None = None
    """The fastest config whose quality (the fidelity under the fidelity objective) is at least this."""
    prompts: int = 8
    length: int = 4096
    seed: int = 0
    space: Sequence[str] | Mapping[str, Sequence[Any]] = ()
    max_configs: int = 256
    prompt_file: str | os.PathLike | None = None
    tasks: Sequence[str] | None = None
    """Calibration tasks or groups; None: ``spts.tuning.DEFAULT_TASKS`` less the held-out ones."""
    answer_tokens: int = ANSWER_TOKENS
    min_survivors: int = 4
    measure: int = 3
    """How many of the best configs get timed prefills (full vs config); 0: none."""
    measure_repeats: int = 3
    speed_repeats: int = 5
    lengths: Sequence[int] = ()
    """Several prompt lengths (prompts cycle over tasks and lengths; the speed target holds at each); () is
    ``(length,)``."""
    objective: str | None = None
    """``fidelity``, ``score``, ``blend`` or ``answered`` (:mod:`spts.tuning.quality`); None: blend for generated
    prompts, fidelity for a prompt file (it has no references)."""
    answered_min: float = ANSWERED_MIN
    """``answered``: the full model's task score from which a prompt counts as answered; calibration prompts are
    drawn among those (:func:`spts.tuning.prompts.answered_prompts`)."""
    max_misses: int = MAX_MISSES
    """``answered``: a task and length is given up after this many unanswered draws in a row."""
    holdout: Sequence[str] | None = None
    """Tasks or groups left out of calibration, reported on; None: the default family (:mod:`.holdout`); ``()``
    or ``("none",)``: none."""
    holdout_prompts: int = 8
    """Development prompts of the held-out tasks the chosen schedule is scored on (0: none)."""

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
            ("holdout_prompts", 0),
            ("max_misses", 1),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")  # fmt: skip
        object.__setattr__(self, "lengths", tuple(self.lengths))
        if self.lengths:
            if self.length != 4096 and tuple(self.lengths) != (self.length,):
                raise ValueError(f"give length or lengths, not both (length={self.length}, lengths={self.lengths})")
            bad = [n for n in self.lengths if isinstance(n, bool) or not isinstance(n, int) or n < 16]
            if bad or len(set(self.lengths)) != len(self.lengths):
                raise ValueError(f"lengths must be distinct ints >= 16, got {list(self.lengths)}")
        if self.objective is not None and self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not (isinstance(self.answered_min, int | float) and 0.0 < self.answered_min <= 1.0):
            raise ValueError(f"answered_min must be in (0, 1], got {self.answered_min!r}")
        if self.prompt_file is not None and self.objective is not None and needs_score(self.objective):
            raise ValueError(
                f"objective {self.objective!r} grades answers against references, and a prompt file has none: use "
                "objective fidelity (the default with a prompt file) or generated tasks"
            )
        if self.prompt_file is not None and len(self.all_lengths) > 1:
            raise ValueError(
                "a prompt file's prompts have their own lengths: give length (where to cut them), not lengths"
            )
        if isinstance(self.tasks, str) or isinstance(self.holdout, str):
            raise ValueError("give tasks and holdout as sequences of names, e.g. ('niah_single', 'lbf')")
        _ = self.split  # raises for unknown tasks, a task both calibrated on and held out, or nothing to calibrate on
        parse_space(self.space)  # raises for an unknown field or a malformed spec

    @property
    def all_lengths(self) -> tuple[int, ...]:
        return tuple(self.lengths) or (self.length,)

    @property
    def resolved_objective(self) -> str:
        return self.objective or ("fidelity" if self.prompt_file is not None else "blend")

    @property
    def split(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(calibration tasks, held-out tasks); no calibration tasks with a prompt file."""
        return holdout.resolve(self.tasks, self.holdout, self.prompt_file is not None)

    @property
    def target(self) -> Target:
        if self.target_speedup is not None:
            return Target("speedup", float(self.target_speedup), self.resolved_objective)
        return Target("fidelity", float(self.min_fidelity), self.resolved_objective)  # type: ignore[arg-type]

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
    quality: float | None = None
    """The chosen config's quality under the objective (its fidelity under the fidelity objective)."""
    holdout: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    """The chosen config and the full model on the held-out tasks (task scores, retention), if any."""

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
    ``length`` or ``lengths``, ``seed``, ``objective``, ``tasks``, ``holdout``, ``space``, ``max_configs``,
    ``prompt_file``, ...), or pass ``settings``. ``proxies``: LTP proxies (object or file) or an FFN scorer, as for
    :func:`spts.enable`. ``speed_model``: use this instead of timing the model (else measured once and cached in
    ``out``). An interrupted search resumes from ``out``.
    """
    settings = settings or TuneSettings(**options)
    if is_enabled(model):
        raise ValueError("tune the unmodified model: call spts.disable(model) first")
    out_dir = Path(out)
    num_layers = model.config.num_hidden_layers
    lengths, objective = settings.all_lengths, settings.resolved_objective
    graded = needs_score(objective)
    prompts, held_out = _calibration_prompts(model, tokenizer, settings)
    proxies = load_proxies(proxies)
    policy = ffn_policy(proxies)
    out_dir.mkdir(parents=True, exist_ok=True)
    parameter = next(model.parameters())
    name = model_name or getattr(model.config, "_name_or_path", None) or model.config.model_type
    run = {"model": name, "ffn_policy": policy, "dtype": str(parameter.dtype), "answer_tokens": settings.answer_tokens,
           "objective": objective}  # fmt: skip
    check_run(out_dir, run)
    store = TrialStore(out_dir)
    selection = None
    if objective == "answered":
        prompts, selection = _answered_prompts(model, tokenizer, settings, store)
    scorers = Scorers(model, proxies)
    needs_inputs = bool(getattr(scorers.last_layer(), "needs_inputs", False))
    grid = build_grid(num_layers, parse_space(settings.space))
    # Block-sparse attention's speed depends on the text: configs are timed on each length's first calibration
    # prompt, and densities, measured on the longest length's, are predicted alike at every length.
    sparse_block = next((c.sparse_block for c in grid.configs if c.sparse_from is not None), None)
    speed_source = "given"
    if speed_model is None:
        speed_model, cached = load_or_measure(
            out_dir, model, max(lengths), scorers.last_layer(), policy, settings.speed_repeats, sparse_block
        )
        speed_source = "cached" if cached else "measured"
    texts = (
        {n: next((p.input_ids for p in prompts if p.target_length == n), prompts[0].input_ids) for n in lengths}
        if sparse_block
        else {}
    )
    densities = measure_densities(model, grid.configs, texts[max(lengths)].to(parameter.device)) if texts else {}
    by_length = {
        fingerprint(c): {n: speed_model.speedup(c, n, needs_inputs, densities_for(c, densities)) for n in lengths}
        for c in grid.configs
    }
    predicted = {fp: min(speeds.values()) for fp, speeds in by_length.items()}  # the target holds at every length
    mean_speed = {fp: sum(speeds.values()) / len(speeds) for fp, speeds in by_length.items()}
    target = settings.target
    candidates = _meeting_target(grid, predicted, target, lengths, num_layers)
    configs = {fingerprint(c): c for c in subsample(candidates, settings.max_configs, settings.seed)}

    bar = tqdm(total=0, desc="tune", unit="trial", disable=not progress)

    def evaluate(fps: Sequence[str], upto: int) -> dict[str, Any]:
        seen = prompts[:upto]
        score_prompts(model, tokenizer, seen, fps, configs, scorers, store, settings.answer_tokens, graded, bar)
        return {fp: store.aggregate(fp, seen, objective, settings.answered_min) for fp in fps}

    rungs = successive_halving(
        list(configs), len(prompts), evaluate, ranking(target, predicted, mean_speed), settings.min_survivors,
        most_faithful_survives=target.kind == "fidelity",
    )  # fmt: skip
    chosen_fp = rungs[-1].fingerprints[0]
    chosen_aggregate = store.aggregate(chosen_fp, prompts[: rungs[-1].prompts], objective, settings.answered_min)
    target_met = target.kind == "speedup" or chosen_aggregate.quality >= target.value
    timed = measure_configs(model, lengths, list(rungs[-1].fingerprints[: settings.measure]), configs, scorers,
                            store, settings.measure_repeats, settings.seed, texts)  # fmt: skip
    held = None
    if held_out:
        score_prompts(model, tokenizer, held_out, [chosen_fp], configs, scorers, store, settings.answer_tokens,
                      True, bar)  # fmt: skip
        held = holdout.summarize(
            held_out,
            [store.trials[(chosen_fp, p.prompt_id)] for p in held_out],
            [store.references[p.prompt_id] for p in held_out],
        )
    bar.close()

    latest: dict[str, dict[str, Any]] = {}  # each config at the last rung it reached, best first per rung
    for rung in reversed(rungs):
        for fp in (fp for fp in rung.fingerprints if fp not in latest):
            kv = {str(n): kv_fraction(configs[fp], num_layers, n) for n in lengths}
            latest[fp] = {
                **asdict(store.aggregate(fp, prompts[: rung.prompts], objective, settings.answered_min)),
                "config": behaviour(configs[fp]),
                "description": report.describe(configs[fp]),
                "predicted_speedup": predicted[fp],
                "predicted_by_length": {str(n): s for n, s in by_length[fp].items()},
                "kv_fraction": kv[str(max(lengths))],
                "kv_by_length": kv,
                "measured": timed.get(fp),
            }
    calibration, held_tasks = settings.split
    summary = report.build_summary(
        model_name=name,
        command=command or settings.call(),
        settings=settings,
        target=target,
        objective=objective,
        lengths=list(lengths),
        calibration_tasks=list(calibration),
        holdout_tasks=list(held_tasks),
        device=str(parameter.device),
        dtype=str(parameter.dtype),
        ffn_policy=policy,
        prompts=[{"prompt_id": p.prompt_id, "tokens": p.length, "source": p.source, "family": p.family,
                  "answer": store.references.get(p.prompt_id, {}).get("answer"),
                  "task_answer": store.references.get(p.prompt_id, {}).get("task_answer")} for p in prompts],
        space={"explicit": {k: list(v) for k, v in parse_space(settings.space).items()}, "valid": len(grid.configs),
               "invalid": grid.invalid, "duplicates": grid.duplicates, "meeting_target": len(candidates),
               "searched": len(configs)},
        rungs=[{"prompts": r.prompts, "configs": len(r.fingerprints)} for r in rungs],
        configs=list(latest.values()),
        chosen=chosen_fp,
        target_met=target_met,
        holdout=held,
        prompt_selection=selection,
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
        quality=chosen_aggregate.quality,
        holdout=held,
    )


def _calibration_prompts(
    model: nn.Module, tokenizer: Any, settings: TuneSettings
) -> tuple[list[CalibrationPrompt], list[CalibrationPrompt]]:
    """The prompts to tune on and the held-out ones to report on, checked against the model's context window (with
    room for the answer). Under ``answered`` no prompts to tune on yet: :func:`_answered_prompts` draws them."""
    window = getattr(model.config, "max_position_embeddings", None)
    longest = max(settings.all_lengths)
    if isinstance(window, int) and longest > window:
        raise ValueError(f"length {longest} is beyond the model's context window of {window} tokens")
    calibration, held = settings.split
    renderer = PromptRenderer(tokenizer, max_prompt_tokens=settings.length if settings.prompt_file else None)
    held_out = []
    if held and settings.holdout_prompts:
        held_out = generated_prompts(renderer, settings.holdout_prompts, settings.all_lengths, settings.seed, held)
    if settings.prompt_file is not None:
        prompts = file_prompts(renderer, settings.prompt_file, settings.prompts)
    elif settings.resolved_objective != "answered":
        prompts = generated_prompts(renderer, settings.prompts, settings.all_lengths, settings.seed, calibration)
    else:
        prompts = []
    return _fitting(model, settings, prompts), _fitting(model, settings, held_out)


def _fitting(model: nn.Module, settings: TuneSettings, prompts: list[CalibrationPrompt]) -> list[CalibrationPrompt]:
    """``prompts``, or a ValueError naming those that leave no room for their answer in the context window."""
    window = getattr(model.config, "max_position_embeddings", None)

    def answer(p: CalibrationPrompt) -> int:
        return max(settings.answer_tokens, p.sample.max_new_tokens if p.sample else 0)

    too_long = [p.prompt_id for p in prompts if isinstance(window, int) and p.length + answer(p) > window]
    if too_long:
        raise ValueError(f"prompts {too_long} with their answer exceed the context window of {window} tokens")
    return prompts


def _answered_prompts(
    model: nn.Module, tokenizer: Any, settings: TuneSettings, store: TrialStore
) -> tuple[list[CalibrationPrompt], dict[str, Any]]:
    """Under ``answered``: calibration prompts the full model answers, its answers stored in ``store`` (resumable),
    and what was drawn to find them; a TuneError when it answers none."""
    selection = answered_prompts(
        PromptRenderer(tokenizer), settings.prompts, settings.all_lengths,
        lambda p: full_score(model, tokenizer, _fitting(model, settings, [p])[0], store, settings.answer_tokens),
        settings.answered_min, settings.seed, settings.split[0], settings.max_misses,
    )  # fmt: skip
    if not selection.prompts:
        raise TuneError(
            f"the full model answers none of the calibration prompts drawn (task score >= {settings.answered_min:g} "
            f"on none of {sum(c['drawn'] for c in selection.drawn.values())} prompts of "
            f"{', '.join(selection.drawn)}): lower --answered-min, calibrate on other --tasks or use --objective blend"
        )
    return selection.prompts, {"answered_min": settings.answered_min, **selection.to_dict()}


def _meeting_target(
    grid: Grid, predicted: dict[str, float], target: Target, lengths: tuple[int, ...], num_layers: int
) -> list[SPTSConfig]:
    """The valid configs, less those predicted below a speedup target at some length; an error when none is
    left."""
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
        at = f"{lengths[0]} tokens" if len(lengths) == 1 else f"every length of {', '.join(map(str, lengths))} tokens"
        raise TuneError(
            f"no config of the search space is predicted to reach a {target.value:g}x TTFT speedup at {at} "
            f"(the fastest is {predicted[fingerprint(fastest)]:.2f}x: {report.describe(fastest)}); lower "
            "--target-speedup or widen --space"
        )
    return meeting
