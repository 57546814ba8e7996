"""The converted-model cache: where it lives, whether a converted folder is current, and how it is filled.

``transformers`` can read the zoo's GGUF files and dequantize them into an ordinary float model, but that
takes 20-60 s on a CPU. Each GGUF is therefore converted *once* into a plain Hugging Face folder
(safetensors + tokenizer) outside the repository, and every later load reads that folder (about a second).

Cache layout (``$SPTS_CACHE_DIR`` replaces ``~/.cache/spts``)::

    ~/.cache/spts/models/<name>/            converted HF folder (config, safetensors, tokenizer)
    ~/.cache/spts/models/<name>/spts_source.json   sha256 of the GGUF it came from

Conversion always writes into a temporary sibling folder that is renamed into place only when complete, so an
interrupted conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from spts.zoo.catalogue import ZooEntry
from spts.zoo.packages import check_sha, sha256_of, source_fingerprint

logger = logging.getLogger(__name__)

#: Written into every converted folder; bump to force a reconversion after a change in how we convert.
FORMAT_VERSION = 1
SOURCE_JSON = "spts_source.json"
_STALE_WORK_DIR_S = 3600.0


def cache_dir() -> Path:
    """Root of spts's cache: ``$SPTS_CACHE_DIR`` if set, else ``~/.cache/spts``.

    Kept outside the repository because converted models are hundreds of MB to GB.
    """
    env = os.environ.get("SPTS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "spts"


def model_dir(entry: ZooEntry) -> Path:
    """Where ``entry``'s converted folder lives (whether or not it exists yet)."""
    return cache_dir() / "models" / entry.name


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Keep huggingface_hub off the network (unreachable here; failing fast beats a long timeout).

    Belt and braces: every call also passes ``local_files_only=True``, which is what really guarantees it
    when huggingface_hub was imported before these variables were set.
    """
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ[k] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide transformers' per-load progress bars for the fast cached load (they are noise there)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _read_source_json(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / SOURCE_JSON).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors")) and (folder / SOURCE_JSON).is_file()


def up_to_date(entry: ZooEntry, folder: Path, parts: list[Path]) -> bool:
    """Whether the converted folder still matches the installed GGUF (re-hashing only on change)."""
    if not _is_complete(folder):
        return False
    meta = _read_source_json(folder)
    if meta is None or meta.get("format_version") != FORMAT_VERSION:
        return False
    fingerprint = source_fingerprint(parts)
    if meta.get("source_fingerprint") == fingerprint:
        return True
    # Reinstalled or moved packages: the bytes may still be the same, in which case no reconversion is needed.
    sha = sha256_of(parts)
    if sha != meta.get("gguf_sha256"):
        return False
    meta["source_fingerprint"] = fingerprint
    with contextlib.suppress(OSError):
        write_json_atomic(folder / SOURCE_JSON, meta)
    return True


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def convert_gguf(entry: ZooEntry, parts: list[Path], folder: Path) -> None:
    """Dequantize the GGUF with transformers and save it as a plain float32 HF folder, atomically."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import is_accelerate_available

    if not is_accelerate_available():
        # transformers refuses GGUF loading without accelerate; say so before spending time.
        raise ModuleNotFoundError(
            "converting a GGUF model needs the 'accelerate' package (transformers requires it for GGUF). "
            "Install with:\n    pip install accelerate"
        )

    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_dirs(entry, parent)
    logger.info("converting GGUF %s once to %s (about a minute on a CPU)", entry.gguf_name, folder)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=parent))
    try:
        if len(parts) == 1:
            gguf_dir, gguf_name = parts[0].parent, parts[0].name
            sha = sha256_of(parts)
        else:
            gguf_dir, gguf_name = work / "gguf", entry.gguf_name
            gguf_dir.mkdir()
            sha = sha256_of(parts, copy_to=gguf_dir / gguf_name)
        check_sha(entry, sha, parts)

        out = work / "model"
        with offline():
            tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name, local_files_only=True)
            # float32 keeps the dequantized weights exact: Q4 blocks are fp16 scale * int4 (+ fp16 min),
            # which fits a float32 mantissa but not a bfloat16 one. Callers cast on load.
            model = AutoModelForCausalLM.from_pretrained(
                gguf_dir, gguf_file=gguf_name, dtype=torch.float32, local_files_only=True
            )
        # save_pretrained refuses a model that still looks quantized; the weights are already dense floats.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.is_quantized = False
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        del model
        write_json_atomic(
            out / SOURCE_JSON,
            {
                "format_version": FORMAT_VERSION,
                "name": entry.name,
                "packages": list(entry.packages),
                "gguf_name": entry.gguf_name,
                "gguf_sha256": sha,
                "source_fingerprint": source_fingerprint(parts),
                "transformers_version": transformers.__version__,
                "dtype": "float32",
            },
        )
        _install_dir(out, folder, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    logger.info("converted %s in %.1f s", entry.name, time.perf_counter() - t0)


def _remove_stale_work_dirs(entry: ZooEntry, parent: Path) -> None:
    """Delete work folders left by conversions that were killed (SIGKILL skips our cleanup).

    Only folders untouched for an hour go, so a conversion running in another process is left alone.
    """
    cutoff = time.time() - _STALE_WORK_DIR_S
    for d in parent.glob(f".{entry.name}.tmp-*"):
        with contextlib.suppress(OSError):
            if d.is_dir() and d.stat().st_mtime < cutoff:
                shutil.rmtree(d, ignore_errors=True)


def _install_dir(new: Path, folder: Path, work: Path) -> None:
    """Move a finished folder into place; a stale folder is moved aside first and removed after."""
    if folder.exists():
        stale = work / "stale"
        # If this fails someone else is replacing it right now; their result is as good as ours.
        with contextlib.suppress(OSError):
            os.replace(folder, stale)
    try:
        os.replace(new, folder)
    except OSError:
        # Another process finished first (rename onto a non-empty folder fails): keep theirs if it is whole.
        if not _is_complete(folder):
            raise
