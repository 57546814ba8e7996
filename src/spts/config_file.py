"""The SPTS config file format: what ``spts tune`` writes and ``spts.enable(model, "tuned.json")`` reads.

A file records the model it was made for (family and layer count), so a schedule tuned for one
model is refused, with a clear error, on a model with another layer count or family. This module knows the file,
not the config: :meth:`spts.config.SPTSConfig.from_file` and ``to_file`` build on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FORMAT = "spts-config"
VERSION = 1


class ConfigFileError(ValueError):
    """A config file that cannot be used: unreadable, not an spts config, invalid, or for another model."""


def model_identity(model_or_config: Any) -> dict[str, Any]:
    """What a config file checks about a model: its family and layer count."""
    config = getattr(model_or_config, "config", model_or_config)
    return {"model_type": getattr(config, "model_type", None), "num_layers": getattr(config, "num_hidden_layers", None)}


def write_config_file(
    fields: dict[str, Any], path: str | os.PathLike, model: Any = None, metadata: dict[str, Any] | None = None
) -> Path:
    """Write a config's ``fields`` (and, if given, the model it is for and free-form ``metadata``) to ``path``."""
    path = Path(path)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": fields,
        "model": model_identity(model) if model is not None else None,
        "metadata": metadata or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def read_config_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A config file's fields (not yet validated) and the identity of the model it was made for, if recorded."""
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
    return fields, payload.get("model")


def check_made_for(path: str | os.PathLike, made_for: dict[str, Any] | None, model: Any) -> None:
    """Refuse a file made for a model unlike ``model`` (another family or layer count)."""
    if model is None or not made_for:
        return
    here = model_identity(model)
    different = {k: (v, here.get(k)) for k, v in made_for.items() if v is not None and here.get(k) != v}
    if different:
        described = ", ".join(f"{k} {want} (this model: {have})" for k, (want, have) in different.items())
        raise ConfigFileError(
            f"{path} was made for another model ({described}); tune a schedule for this model with spts tune"
        )
