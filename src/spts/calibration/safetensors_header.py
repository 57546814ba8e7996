"""Reading a safetensors header without trusting it.

Why: the safetensors loader believes the file's first 8 bytes (the header length) and the offsets in the
header, so a truncated download or random bytes end in a ``MemoryError`` or ``OverflowError`` from deep
inside it. Here every number is checked against the file's real size first; nothing is allocated from a
size the file declares before that size is known to fit in the file. Only after :func:`read_header`
succeeds is it safe to hand the file to safetensors.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

#: Bytes per element of every dtype the safetensors format defines.
DTYPE_SIZES: Mapping[str, int] = MappingProxyType(
    {
        "BOOL": 1,
        "U8": 1,
        "I8": 1,
        "F8_E5M2": 1,
        "F8_E4M3": 1,
        "I16": 2,
        "U16": 2,
        "F16": 2,
        "BF16": 2,
        "I32": 4,
        "U32": 4,
        "F32": 4,
        "I64": 8,
        "U64": 8,
        "F64": 8,
    }
)
#: A proxy file's header lists six tensors per layer in well under 1 KiB each; 16 MiB is far beyond any
#: real one and keeps a corrupted length from making us read (and parse) a huge "header".
MAX_HEADER_BYTES = 16 * 2**20
_LENGTH_BYTES = 8


class HeaderError(ValueError):
    """What is wrong with a file's safetensors header (the caller adds the path and what to do)."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the header; offsets are relative to the start of the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A header whose tensors are known to tile the file's data section exactly."""

    tensors: Mapping[str, TensorInfo]
    metadata: Mapping[str, str]
    file_size: int


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Read and validate ``path``'s safetensors header; raise :class:`HeaderError` saying what is wrong.

    Checks, in order: the 8-byte little-endian header length fits in the file and is sane, the header is a
    UTF-8 JSON object, ``__metadata__`` maps strings to strings, and every tensor has a known dtype, a
    shape of non-negative ints and ``data_offsets`` that match its size, lie inside the file and, together,
    cover the data section without gaps or overlaps (as the safetensors loader itself requires).
    """
    path = Path(path)
    file_size = path.stat().st_size
    if file_size < _LENGTH_BYTES:
        raise HeaderError(
            f"the file is {file_size} bytes long, shorter than the {_LENGTH_BYTES}-byte header length every "
            "safetensors file starts with"
        )
    with open(path, "rb") as handle:
        header_len = int.from_bytes(handle.read(_LENGTH_BYTES), "little")
        available = file_size - _LENGTH_BYTES
        if header_len == 0 or header_len > available:
            raise HeaderError(
                f"its first {_LENGTH_BYTES} bytes declare a {header_len}-byte header but only {available} bytes "
                "follow: not a safetensors file, or cut short"
            )
        if header_len > MAX_HEADER_BYTES:
            raise HeaderError(
                f"its first {_LENGTH_BYTES} bytes declare a {header_len}-byte header, more than any proxy file "
                f"needs ({MAX_HEADER_BYTES}); it is not a safetensors proxy file"
            )
        raw = handle.read(header_len)  # header_len <= file size: bounded by what is really there
    if len(raw) != header_len:  # the file shrank since stat()
        raise HeaderError(f"the header is cut short: {len(raw)} of {header_len} bytes")
    header = _parse_json(raw)
    metadata = _metadata(header.pop("__metadata__", {}))
    data_size = available - header_len
    tensors = {name: _tensor_info(name, entry) for name, entry in header.items()}
    _check_tiling(tensors, data_size)
    return SafetensorsHeader(tensors=MappingProxyType(tensors), metadata=metadata, file_size=file_size)


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise HeaderError(f"the header is not JSON ({type(error).__name__}: {str(error)[:120]})") from None
    if not isinstance(header, dict):
        raise HeaderError(f"the header is JSON but a {type(header).__name__}, not an object of tensors")
    return header


def _metadata(raw: Any) -> Mapping[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise HeaderError("the header's __metadata__ is not an object of strings")
    return MappingProxyType(dict(raw))


def _is_count(value: Any) -> bool:
    """A non-negative int (bool is an int in Python, but never a size)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _tensor_info(name: str, entry: Any) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise HeaderError(f"tensor {name!r} is not described by exactly dtype, shape and data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_SIZES:
        raise HeaderError(f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise HeaderError(f"tensor {name!r} has shape {shape!r}, not a list of non-negative ints")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(n) for n in offsets):
        raise HeaderError(f"tensor {name!r} has data_offsets {offsets!r}, not two non-negative ints")
    begin, end = offsets
    # Python ints do not overflow, so an absurd shape just fails this comparison.
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
    if end < begin or end - begin != nbytes:
        raise HeaderError(
            f"tensor {name!r} ({dtype}, shape {shape}) needs {nbytes} bytes but its data_offsets span {end - begin}"
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape), begin=begin, end=end)


def _check_tiling(tensors: Mapping[str, TensorInfo], data_size: int) -> None:
    """Every tensor inside the data section, back to back, covering all of it."""
    for name, info in tensors.items():
        if info.end > data_size:
            raise HeaderError(
                f"tensor {name!r} ends at byte {info.end} of the data but the file holds only {data_size} data "
                "bytes: cut short"
            )
    covered = 0
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin != covered:
            raise HeaderError(f"tensor {name!r} starts at byte {info.begin}, expected {covered}: overlap or gap")
        covered = info.end
    if covered != data_size:
        raise HeaderError(f"the tensors cover {covered} of the file's {data_size} data bytes; the rest is unexplained")
