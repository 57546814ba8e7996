"""``spts eval``: accuracy of the full model vs SPTS configs, ablations and peers on long-context tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spts.cli.common import base_config, command_line, console, describe_config, load_model
from spts.machine import run_context


def eval_command(
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
            "<name>=<path>.json (each may take +<variant>), "
            "or a peer: gemfilter[@keep][:L<layer>], fastkv[@keep][:L<layer>], lazyllm[@scale]"
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
    from spts.tasks import resolve_tasks
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
        f"base SPTS config {describe_config(config, proxies is not None)}. Command: `{command}`"
    )
    if any("prefix_reused_s" in row for row in rows):
        header += (
            "\n\nSome SPTS schedules replayed the layers below their start from the full model's prefill "
            "(--reuse-prefix): their TTFT is the full model's time for those layers plus their own prefill."
        )
    write_reports(rows, out, header)
    console.print((out / "table.md").read_text())
