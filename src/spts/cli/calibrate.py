"""``spts calibrate``: build LTP proxies (low-rank FFN predictors) for a model and report their fidelity."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from spts.cli.common import command_line, console, load_model
from spts.machine import machine


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
