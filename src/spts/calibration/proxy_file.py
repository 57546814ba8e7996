"""LTP proxy files: safetensors tensors plus metadata that ties them to one model.

A proxy file is only valid for the weights it was calibrated on. Loading checks the file's structure
before anything is read from it (:mod:`spts.calibration.safetensors_header`: a truncated or random file
must not make the loader allocate what its first bytes claim), then the format version, the metadata,
every tensor's name, dtype and shape, and later the model's shape and FFN-weight fingerprint. Every
failure is a :class:`ProxyFileError` that names the file and the ``spts calibrate`` command that
rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from spts.adapters import adapter_for
from spts.calibration.safetensors_header import HeaderError, SafetensorsHeader, TensorInfo, read_header
from spts.errors import SPTSError
from spts.policies.ltp import VARIANTS, LayerProxy
from spts.zoo.catalogue import ZOO

FORMAT_VERSION = 1
_TENSORS = ("channels", "gate_u", "gate_v", "up_u", "up_v", "down")
# At most 9 digits: int() refuses strings over 4300 digits, and no model has a billion layers.
_TENSOR_KEY = re.compile(r"layers\.(\d{1,9})\.(\w+)")
_INDEX_DTYPES = ("I64", "I32")
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


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


#: Python type of each metadata field (annotations are strings under ``from __future__ import annotations``).
_META_TYPES: Mapping[str, type] = {f.name: {"str": str, "int": int, "float": float}[f.type] for f in fields(ProxyMeta)}


@dataclass(frozen=True)
class LTPProxies:
    """One low-rank proxy per calibrated layer, with the metadata that identifies the model."""

    layers: Mapping[int, LayerProxy]
    meta: ProxyMeta
    path: Path | None = field(default=None, compare=False)
    """The file these proxies were loaded from (None when built in memory): error messages name it."""

    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`ProxyFileError` unless these proxies were built for ``model``'s weights."""
        expected = model_identity(model)
        for name in ("model_type", "num_layers", "hidden_size", "intermediate_size", "fingerprint"):
            have, want = getattr(self.meta, name), expected[name]
            if have != want:
                subject = f"the LTP proxies in {self.path} were" if self.path else "these LTP proxies were"
                command = rebuild_command(None, model, out="<new proxy file>")
                raise ProxyFileError(
                    f"{subject} built for another model: {name} is {have!r} in the proxies but {want!r} in this "
                    f"model. Calibrate proxies for this model with `{command}` (or spts.calibrate(model, texts))."
                )


def rebuild_command(path: Path | None, model: nn.Module | None = None, out: str | None = None) -> str:
    """The ``spts calibrate`` command that builds a proxy file at ``path`` (or ``out``), for ``model`` if given.

    ``--model`` is the zoo name or model folder when one can be told from ``model`` or from a zoo cache file
    name (``NAME-FINGERPRINT.safetensors``), else a placeholder for the user to fill in.
    """
    target = out or (shlex.quote(str(path)) if path is not None else "<proxy file>")
    return f"spts calibrate --model {_model_option(path, model)} --out {target}"


def _model_option(path: Path | None, model: nn.Module | None) -> str:
    if model is not None:
        folder = str(getattr(model, "name_or_path", "") or "")
        if folder:
            if Path(folder).parent.name == "models" and Path(folder).name in ZOO:  # a zoo model's converted folder
                return Path(folder).name
            if Path(folder).is_dir():
                return shlex.quote(folder)
    elif path is not None:
        name = path.name.removesuffix(".safetensors").rpartition("-")[0]
        if name in ZOO:
            return name
    return "<zoo name or model folder>"


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
    """Read a proxy file; any file that is not a usable spts proxy file raises :class:`ProxyFileError`.

    The header is validated against the file's size before safetensors reads anything, so a truncated or
    random-bytes file fails with a message (naming the file and the command that rebuilds it) instead of
    allocating whatever its first bytes claim.
    """
    path = Path(path)
    if not path.is_file():
        raise ProxyFileError(f"LTP proxy file {path} does not exist; create it with `{rebuild_command(path)}`")
    try:
        header = read_header(path)
    except HeaderError as error:
        raise _unreadable(path, str(error)) from None
    except OSError as error:
        raise _unreadable(path, f"cannot read it: {error}") from None
    meta = _parse_meta(path, header.metadata)
    layout = _check_layout(path, header, meta)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:  # e.g. the file changed since
        raise _unreadable(path, str(error)) from None
    layers = {idx: LayerProxy(**{name: tensors[f"layers.{idx}.{name}"] for name in _TENSORS}) for idx in layout}
    for idx, layer in layers.items():
        channels = layer.channels
        if int(channels.min()) < 0 or int(channels.max()) >= meta.intermediate_size:
            raise _invalid(path, f"layer {idx} keeps channels outside the FFN's {meta.intermediate_size} channels")
    return LTPProxies(layers=layers, meta=meta, path=path)


def _unreadable(path: Path, what: str) -> ProxyFileError:
    return ProxyFileError(
        f"{path} is not a readable LTP proxy file (truncated or corrupted: {what}). Rebuild it with "
        f"`{rebuild_command(path)}`"
    )


def _invalid(path: Path, what: str) -> ProxyFileError:
    return ProxyFileError(f"{path} is not a valid LTP proxy file: {what}. Rebuild it with `{rebuild_command(path)}`")


def _parse_meta(path: Path, raw: Mapping[str, str]) -> ProxyMeta:
    """The metadata as a :class:`ProxyMeta`, every field present and of its type."""
    if not raw:
        raise _invalid(path, "it has no spts metadata (a safetensors file, but not one `spts calibrate` wrote)")
    values: dict[str, Any] = {}
    for key, text in raw.items():
        try:
            values[key] = json.loads(text)
        except (ValueError, RecursionError):
            raise _invalid(path, f"metadata {key!r} is not JSON ({text[:60]!r})") from None
    version = values.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ProxyFileError(
            f"{path} uses LTP proxy format {version}, newer than this spts reads ({FORMAT_VERSION}); upgrade spts "
            f"or rebuild it with this version: `{rebuild_command(path)}`"
        )
    missing = sorted(set(_META_TYPES) - set(values))
    unknown = sorted(set(values) - set(_META_TYPES))
    if missing or unknown:
        problems = [f"lacks {', '.join(missing)}"] if missing else []
        problems += [f"has unknown {', '.join(unknown)}"] if unknown else []
        raise _invalid(path, f"no valid LTP proxy metadata: it {' and '.join(problems)}")
    for key, kind in _META_TYPES.items():
        value = values[key]
        allowed = (int, float) if kind is float else kind
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise _invalid(path, f"metadata {key!r} is {value!r}, not of type {kind.__name__}")
    meta = ProxyMeta(**values)
    sizes = ("num_layers", "hidden_size", "intermediate_size", "d_low", "rank", "format_version")
    bad = [name for name in sizes if getattr(meta, name) < 1]
    if bad or meta.d_low > meta.intermediate_size:
        raise _invalid(path, f"impossible sizes in its metadata ({', '.join(bad) or 'd_low > intermediate_size'})")
    if meta.variant not in VARIANTS:
        raise ProxyFileError(
            f"{path} names an unknown LTP variant {meta.variant!r} (known: {', '.join(VARIANTS)}); rebuild it "
            f"with `{rebuild_command(path)}`"
        )
    return meta


def _check_layout(path: Path, header: SafetensorsHeader, meta: ProxyMeta) -> list[int]:
    """The calibrated layer indices, after checking every tensor's name, dtype and shape against ``meta``."""
    layers: dict[int, dict[str, TensorInfo]] = {}
    for key, info in header.tensors.items():
        match = _TENSOR_KEY.fullmatch(key)
        if match is None or match[2] not in _TENSORS:
            raise _invalid(path, f"unexpected tensor {key!r} (expected layers.<i>.{'|'.join(_TENSORS)})")
        idx = int(match[1])
        if idx >= meta.num_layers:
            raise _invalid(path, f"it has tensors for layer {idx} but its metadata says {meta.num_layers} layers")
        layers.setdefault(idx, {})[match[2]] = info
    if not layers:
        raise _invalid(path, "it holds no proxy tensors")
    for idx, infos in sorted(layers.items()):
        missing = [name for name in _TENSORS if name not in infos]
        if missing:
            raise ProxyFileError(
                f"{path} lacks tensor 'layers.{idx}.{missing[0]}' of layer {idx}; rebuild it with "
                f"`{rebuild_command(path)}`"
            )
        _check_layer(path, idx, infos, meta)
    return sorted(layers)


def _check_layer(path: Path, idx: int, infos: Mapping[str, TensorInfo], meta: ProxyMeta) -> None:
    # The SVD keeps at most min(rank, hidden, d_low) components, so the rank dimension may be below meta.rank.
    gate_u = infos["gate_u"].shape
    rank = gate_u[1] if len(gate_u) == 2 else 0
    if not 1 <= rank <= meta.rank:
        raise _invalid(path, f"layer {idx}'s gate_u has shape {list(gate_u)}; expected (hidden, rank <= {meta.rank})")
    hidden, d_low = meta.hidden_size, meta.d_low
    expected = {
        "channels": (d_low,),
        "gate_u": (hidden, rank),
        "gate_v": (rank, d_low),
        "up_u": (hidden, rank),
        "up_v": (rank, d_low),
        "down": (hidden, d_low),
    }
    for name, shape in expected.items():
        info = infos[name]
        if info.shape != shape:
            raise _invalid(
                path,
                f"tensor 'layers.{idx}.{name}' has shape {list(info.shape)} but its metadata (hidden_size {hidden}, "
                f"d_low {d_low}, rank {rank}) calls for {list(shape)}",
            )
        allowed = _INDEX_DTYPES if name == "channels" else _FLOAT_DTYPES
        if info.dtype not in allowed:
            raise _invalid(path, f"tensor 'layers.{idx}.{name}' has dtype {info.dtype}; expected one of {allowed}")
