"""Proxies for the zoo's models, built on first use with a fixed recipe and cached outside the repo.

Binary proxies are a few MB per model, too large for git; anyone can rebuild them bit for bit
from the same recipe (``spts calibrate --model NAME``), and the cache file is checked against
the model like any proxy file.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from spts.calibration.calibrate import calibrate
from spts.calibration.proxy_file import LTPProxies, ffn_fingerprint, load_proxies, save_proxies
from spts.calibration.texts import SOURCE, essay_split
from spts.zoo import cache_dir

logger = logging.getLogger(__name__)


def zoo_proxy_path(name: str, model: nn.Module) -> Path:
    return cache_dir() / "proxies" / f"{name}-{ffn_fingerprint(model)}.safetensors"


def zoo_proxies(name: str, model: nn.Module, tokenizer, progress: bool = True) -> LTPProxies:
    """The cached LTP proxies of zoo model ``name``, calibrating them once on the essays if needed."""
    path = zoo_proxy_path(name, model)
    if path.is_file():
        return load_proxies(path)
    logger.warning("calibrating LTP proxies for %s once (about a minute on CPU); cached at %s", name, path)
    proxies = calibrate(model, essay_split("calibration"), tokenizer, source=SOURCE, progress=progress)
    save_proxies(proxies, path)
    return proxies
