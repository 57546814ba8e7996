"""LTP proxy files: safetensors tensors plus metadata that ties them to one model.

A proxy file is only valid for the weights it was calibrated on. Loading checks the format
version, the file's integrity, and the model's shape and FFN-weight fingerprint, and says what
to do when any of them does not match.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from spts.adapters import adapter_for
from spts.errors import SPTSError
from spts.policies.ltp import VARIANTS, LayerProxy

FORMAT_VERSION = 1
_TENSORS = ("channels", "gate_u", "gate_v", "up_u", "up_v", "down")


class ProxyFileError(SPTSError):
    """A proxy file that cannot be used: missing, corrupted, too new, or built for another model."""


@dataclass(frozen=True)
class ProxyMeta:
    """What a proxy file was built from and for."""

    model_type: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    fingerprint: str
    d_low: int
    rank: int
    rho: float
    variant: str
    source: str
    tokens: int
    format_version: int = FORMAT_VERSION


@dataclass(frozen=True)
class LTPProxies:
    """One low-rank proxy per calibrated layer, with the metadata that identifies the model."""

    layers: Mapping[int, LayerProxy]
    meta: ProxyMeta

    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`ProxyFileError` unless these proxies were built for ``model``'s weights."""
        expected = model_identity(model)
        for field in ("model_type", "num_layers", "hidden_size", "intermediate_size", "fingerprint"):
            have, want = getattr(self.meta, field), expected[field]
            if have != want:
                raise ProxyFileError(
                    f"these LTP proxies were built for another model: {field} is {have!r} in the proxies but "
                    f"{want!r} in this model. Calibrate proxies for this model with `spts calibrate` "
                    "(or spts.calibrate(model, texts))."
                )


def require_unmodified(model: nn.Module) -> None:
    """Calibration and fidelity measure the unmodified model; SPTS would hide the skipped tokens."""
    if "_spts_runtime" in model.__dict__:
        raise SPTSError("calibrate on the unmodified model: call spts.disable(model) first, enable SPTS after")


def ffn_fingerprint(model: nn.Module) -> str:
    """A short hash of every layer's FFN weights: a strided sample of values plus all shapes.

    Sampling keeps it fast on 8B models while any re-training or re-quantisation still changes it.
    """
    adapter = adapter_for(model)
    digest = hashlib.sha256()
    for layer in adapter.layers():
        mlp = adapter.mlp(layer)
        for name in ("gate_proj", "up_proj", "down_proj"):
            weight = getattr(mlp, name).weight.detach()
            flat = weight.reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].float().cpu()
            digest.update(str(tuple(weight.shape)).encode())
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def model_identity(model: nn.Module) -> dict[str, Any]:
    config = model.config
    return {
        "model_type": config.model_type,
        "num_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "fingerprint": ffn_fingerprint(model),
    }


def save_proxies(proxies: LTPProxies, path: str | os.PathLike) -> Path:
    """Write ``proxies`` to ``path`` atomically (a partial file never replaces a good one)."""
    path = Path(path)
    tensors = {
        f"layers.{idx}.{name}": getattr(proxy, name).detach().contiguous().cpu()
        for idx, proxy in proxies.layers.items()
        for name in _TENSORS
    }
    metadata = {key: json.dumps(value) for key, value in asdict(proxies.meta).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)
    return path


def load_proxies(path: str | os.PathLike) -> LTPProxies:
    """Read a proxy file, with a clear error for a missing, corrupted or too-new file."""
    path = Path(path)
    if not path.is_file():
        raise ProxyFileError(f"LTP proxy file {path} does not exist; create it with `spts calibrate --out {path}`")
    try:
        with open(path, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_len))
        tensors = load_file(str(path))
    except (SafetensorError, ValueError, OSError, UnicodeDecodeError) as error:
        raise ProxyFileError(
            f"{path} is not a readable LTP proxy file (truncated or corrupted: {error}); delete it and run "
            "`spts calibrate` again"
        ) from None
    raw_meta = header.get("__metadata__") or {}
    try:
        meta_values = {key: json.loads(value) for key, value in raw_meta.items()}
        version = int(meta_values.get("format_version", -1))
        if version > FORMAT_VERSION:
            raise ProxyFileError(
                f"{path} uses LTP proxy format {version}, newer than this spts reads ({FORMAT_VERSION}); "
                "upgrade spts or calibrate again with this version"
            )
        meta = ProxyMeta(**meta_values)
    except (TypeError, ValueError, json.JSONDecodeError) as error:
        if isinstance(error, ProxyFileError):
            raise
        raise ProxyFileError(f"{path} has no valid LTP proxy metadata ({error}); calibrate again") from None
    if meta.variant not in VARIANTS:
        raise ProxyFileError(f"{path} names an unknown LTP variant {meta.variant!r}; calibrate again")
    layers: dict[int, LayerProxy] = {}
    indices = sorted({int(key.split(".")[1]) for key in tensors})
    for idx in indices:
        try:
            layers[idx] = LayerProxy(**{name: tensors[f"layers.{idx}.{name}"] for name in _TENSORS})
        except KeyError as missing:
            raise ProxyFileError(f"{path} lacks tensor {missing} of layer {idx}; calibrate again") from None
    return LTPProxies(layers=layers, meta=meta)
