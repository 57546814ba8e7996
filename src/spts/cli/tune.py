"""``spts tune``: search an SPTS schedule for one model on this machine, the command line of
:func:`spts.tuning.tune`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spts.cli.common import command_line, console, load_model
from spts.tuning.prompts import MAX_MISSES
from spts.tuning.quality import ANSWERED_MIN


def tune_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="zoo model name or local Hugging Face model folder")] = "smollm2-135m",
    target_speedup: Annotated[
        float | None, typer.Option(help="most faithful schedule predicted at least this much faster (TTFT)")
    ] = None,
    min_fidelity: Annotated[
        float | None, typer.Option(help="fastest schedule whose fidelity to the full model is at least this (0-1]")
    ] = None,
    out: Annotated[Path, typer.Option(help="output folder; an existing one is resumed")] = Path("runs/tune"),
    prompts: Annotated[int, typer.Option(help="calibration prompts (the survivors of the search see all)")] = 8,
    length: Annotated[int, typer.Option(help="prompt length in tokens (one length; see --lengths)")] = 4096,
    lengths: Annotated[
        str | None,
        typer.Option(
            help="several prompt lengths, e.g. 4096,8192: prompts cycle over them, the speed target holds at each"
        ),
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option(
            help="fidelity, score, blend or answered (default: blend for generated prompts, fidelity for a prompt "
            "file); score, blend and answered rank by the worst task family; answered calibrates on prompts the "
            "full model answers and rates the task score kept on them"
        ),
    ] = None,
    answered_min: Annotated[
        float,
        typer.Option(help="--objective answered: the full model's task score (0-1] from which a prompt is answered"),
    ] = ANSWERED_MIN,
    max_misses: Annotated[
        int, typer.Option(help="--objective answered: give a task and length up after this many unanswered draws")
    ] = MAX_MISSES,
    seed: Annotated[int, typer.Option(help="calibration prompts and config subsample (disjoint from spts eval's)")] = 0,
    space: Annotated[
        list[str] | None,
        typer.Option(
            help="explicit values of an SPTSConfig field, e.g. start_layer=14,17 or budgets=0.3:0.1 "
            "(repeatable; replaces that part of the grid or adds a dimension)"
        ),
    ] = None,
    max_configs: Annotated[int, typer.Option(help="search at most this many configs (a seeded subsample)")] = 256,
    min_survivors: Annotated[
        int, typer.Option(help="configs that see every prompt (successive halving stops cutting there)")
    ] = 4,
    prompt_file: Annotated[
        Path | None, typer.Option(help='JSONL of {"prompt": ...} lines to calibrate on instead of generated tasks')
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(
            help="generated calibration tasks or groups, comma-separated (default: needles, vt, QA and "
            "LongBench-format, less the held-out family)"
        ),
    ] = None,
    holdout: Annotated[
        str | None,
        typer.Option(
            help="tasks or groups left out of calibration, the chosen schedule's score on them reported "
            "(default: the first of qa, lbf, ruler not calibrated on; 'none': no holdout)"
        ),
    ] = None,
    holdout_prompts: Annotated[int, typer.Option(help="development prompts of the held-out tasks (0: none)")] = 8,
    measure: Annotated[int, typer.Option(help="time prefills of this many of the best configs (0: none)")] = 3,
    measure_repeats: Annotated[int, typer.Option(help="timed prefills per measured config (median)")] = 3,
    device: Annotated[str | None, typer.Option(help="cpu or cuda; default: cuda if available")] = None,
    ltp: Annotated[bool, typer.Option(help="LTP FFN proxies for a zoo model (calibrated once, cached)")] = True,
) -> None:
    """Search an SPTS schedule for one model on this machine (resumable); writes tuned.json and reports."""
    import torch

    from spts.tuning import TuneError, TuneSettings
    from spts.tuning import tune as run_tune
    from spts.tuning.prompts import read_prompt_file
    from spts.zoo import ZOO

    try:  # what can be checked before the model loads
        settings = TuneSettings(
            target_speedup=target_speedup,
            min_fidelity=min_fidelity,
            prompts=prompts,
            length=length,
            lengths=_ints(lengths),
            objective=objective,
            answered_min=answered_min,
            max_misses=max_misses,
            seed=seed,
            space=tuple(space or ()),
            max_configs=max_configs,
            min_survivors=min_survivors,
            prompt_file=prompt_file,
            tasks=_names(tasks),
            holdout=_names(holdout),
            holdout_prompts=holdout_prompts,
            measure=measure,
            measure_repeats=measure_repeats,
        )
        if prompt_file is not None:
            read_prompt_file(prompt_file)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lm, tokenizer = load_model(model, dtype, device)
    proxies = None
    if ltp and model in ZOO:
        from spts.calibration.shipped import zoo_proxies

        with console.status("LTP proxies (the first run calibrates them) ..."):
            proxies = zoo_proxies(model, lm, tokenizer, progress=False)
    command = command_line(ctx)
    try:
        result = run_tune(lm, tokenizer, out, settings=settings, proxies=proxies, model_name=model, command=command)
    except TuneError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(1) from None
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    console.print((out / "table.md").read_text())
    console.print(f"wrote {result.path}; use it with spts.enable(model, {str(result.path)!r})")


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(t.strip() for t in text.split(",") if t.strip())


def _ints(text: str | None) -> tuple[int, ...]:
    if text is None:
        return ()
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ValueError(f"--lengths takes comma-separated token counts, e.g. 4096,8192; got {text!r}") from None
