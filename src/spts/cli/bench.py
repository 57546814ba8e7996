"""``spts bench``: TTFT, end-to-end latency and decode speed of the full model vs SPTS, its ablations and peers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spts.cli.common import base_config, command_line, console, describe_config, load_model
from spts.machine import run_context

BENCH_METHODS = "full,pap,pap+ffn,spts,ceiling"  # spts.bench.harness.ABLATIONS, without importing torch here


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
    batch_size: Annotated[
        int,
        typer.Option(
            help="N > 1: left-padded batches of N prompts of mixed lengths (each length down to half), batched vs "
            "one by one; prompts/s, TTFT, E2E to 32 tokens (methods default: full,spts; docs/batching.md)"
        ),
    ] = 1,
    text: Annotated[
        bool,
        typer.Option(
            help="prompts of real text (a needle prompt over essays; needs --no-random-weights), not random "
            "tokens: block-sparse attention (docs/sparse.md) is only as sparse as the text's attention"
        ),
    ] = False,
) -> None:
    """TTFT, E2E latency and decode speed of the full model vs SPTS, its ablations and peers (resumable)."""
    if batch_size < 1 or (batch_size > 1 and engine != "hf"):
        raise typer.BadParameter(
            "--batch-size takes N >= 1, and N > 1 only with --engine hf", param_hint="--batch-size"
        )
    if batch_size > 1 and text:
        raise typer.BadParameter("--text applies to one prompt at a time: leave out --batch-size or --text")
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
    if batch_size > 1 and methods == BENCH_METHODS:
        methods = ctx.params["methods"] = "full,spts"  # batches compare the model with SPTS; the header says so
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
    if batch_size > 1:
        weights = f"{model} ({'random weights' if random else 'checkpoint'})"
        return _bench_batches(ctx, lm, chosen, sizes, batch_size, out, repeats, warmup, ffn, decode, config, weights)
    prompt = None
    if text:
        if random:
            raise typer.BadParameter("--text needs a tokenizer: add --no-random-weights (a zoo model or a folder)")
        from spts.data.haystack import build_needle_prompt, prompt_input_ids

        def prompt(length: int):
            return prompt_input_ids(tokenizer, build_needle_prompt(tokenizer, length, depth=0.4, seed=1))

    rows = run_bench(
        lm, config, sizes, out, repeats, warmup, ffn, decode=decode, static_decode=static_decode, methods=chosen,
        prompt=prompt,
    )  # fmt: skip
    decoder = "static decoder" if static_decode else "the model's own decode step"
    header = (
        f"{model} ({'random weights' if model in SHAPES and random_weights else 'checkpoint'}), {device}, "
        f"{run_context(dtype)}; SPTS config {describe_config(config, ffn is not None)}; "
        f"{'decoding through ' + decoder if decode else 'prefill only'}; "
        f"{'needle prompts over essays' if text else 'random-token prompts'}. Command: {command_line(ctx)}"
    )
    write_reports(rows, out, header)
    console.print((out / "table.md").read_text())


def _bench_batches(ctx, lm, methods, lengths, batch_size, out, repeats, warmup, ffn, decode, config, weights) -> None:
    import os

    from spts.bench.batched import run_batch_bench, write_batch_reports

    load_before = os.getloadavg()[0]  # other processes' CPU use shows in it: recorded with the results
    try:
        rows = run_batch_bench(lm, lengths, batch_size, methods, out, repeats, warmup, ffn, new_tokens=32 * decode)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    parameter = next(lm.parameters())
    header = (
        f"{weights}, {parameter.device}, {run_context(parameter.dtype)}; batches of {batch_size} left-padded prompts "
        f"of mixed lengths; SPTS config {describe_config(config, ffn is not None)}; 1-minute load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after. Command: {command_line(ctx)}"
    )
    write_batch_reports(rows, out, header)
    console.print((out / "table.md").read_text())
