"""SPTS configs as JSON files: what ``spts tune`` writes and ``spts.enable(model, "tuned.json")`` reads.

A file records the model it was made for (family and layer count), so a schedule tuned for one
model is refused, with a clear error, on a model with another layer count or family.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from spts.config import SPTSConfig

FORMAT = "spts-config"
VERSION = 1


class ConfigFileError(ValueError):
    """A config file that cannot be used: unreadable, not an spts config, invalid, or for another model."""


def model_identity(model_or_config: Any) -> dict[str, Any]:
    """What a config file checks about a model: its family and layer count."""
    config = getattr(model_or_config, "config", model_or_config)
    return {"model_type": getattr(config, "model_type", None), "num_layers": getattr(config, "num_hidden_layers", None)}


def save_config(
    config: SPTSConfig, path: str | os.PathLike, model: Any = None, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``config`` (and, if given, the model it is for and free-form ``metadata``) to ``path`` as JSON."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "model": model_identity(model) if model is not None else None,
        "metadata": metadata or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def load_config(path: str | os.PathLike, model: Any = None) -> SPTSConfig:
    """Read a config file; with ``model``, also check that the file was made for a model like it."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigFileError(f"no SPTS config file at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigFileError(f"{path} is not a readable JSON SPTS config file ({error})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigFileError(f"{path} is not an SPTS config file (no \"format\": \"{FORMAT}\"); write one with "
                              "SPTSConfig.to_file or spts tune")  # fmt: skip
    if payload.get("version") != VERSION:
        raise ConfigFileError(f"{path} has config format version {payload.get('version')}; this spts reads {VERSION}")
    fields = payload.get("config")
    if not isinstance(fields, dict):
        raise ConfigFileError(f'{path} has no "config" object')
    try:
        config = SPTSConfig(**fields)
    except (TypeError, ValueError) as error:
        raise ConfigFileError(f"{path} holds an invalid SPTS config: {error}") from None
    made_for = payload.get("model")
    if model is not None and made_for:
        here = model_identity(model)
        different = {k: (v, here.get(k)) for k, v in made_for.items() if v is not None and here.get(k) != v}
        if different:
            described = ", ".join(f"{k} {want} (this model: {have})" for k, (want, have) in different.items())
            raise ConfigFileError(
                f"{path} was made for another model ({described}); tune a schedule for this model with spts tune"
            )
    return config
