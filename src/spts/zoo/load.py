"""Loading zoo models: convert on first use, then read the cached Hugging Face folder.

Lookups go through the modules (``packages.locate_parts``, ``cache.convert_gguf``) rather than names
imported into this one, so a test that patches them on their own module reaches these functions too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from spts.zoo import cache, catalogue, packages

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def pretrained_path(name: str = "smollm2-135m") -> Path:
    """Folder holding ``name`` as a plain Hugging Face model, converting the packaged GGUF first if needed.

    Raises ``ValueError`` for an unknown name and ``ModuleNotFoundError`` (with the pip command) when the
    carrying packages are not installed.
    """
    entry = catalogue.entry(name)
    parts = packages.locate_parts(entry)
    folder = cache.model_dir(entry)
    if not cache.up_to_date(entry, folder, parts):
        cache.convert_gguf(entry, parts, folder)
    return folder


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
    with cache.offline(), cache.quiet_progress():
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

    entry = catalogue.entry(name)
    parts = packages.locate_parts(entry)
    folder = cache.model_dir(entry)
    with cache.offline(), cache.quiet_progress():
        if cache.up_to_date(entry, folder, parts):
            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if len(parts) == 1:
            return AutoTokenizer.from_pretrained(parts[0].parent, gguf_file=parts[0].name, local_files_only=True)
        # A split GGUF would have to be assembled (hundreds of MB) anyway: convert once and reuse that.
        return AutoTokenizer.from_pretrained(pretrained_path(name), local_files_only=True)
