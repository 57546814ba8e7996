"""The parts of transformers' calling conventions that spts reads, kept in one place.

transformers moves these between releases: 5.24 renamed the cache argument of models and
decoder layers from ``past_key_values`` to ``cache`` (and the output field likewise), keeping the
old name as a deprecated alias. Everything in spts that passes or reads a cache goes through
these helpers, so the next rename is one edit here, and :func:`incompatible` turns a broken
assumption into an error that names the installed and the supported versions.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import transformers

from spts.errors import TransformersCompatibilityError

# Keep equal to the transformers requirement in pyproject.toml (a test checks): the releases the test
# suite has passed on. Raise the upper bound only after the suite passes on the new release.
SUPPORTED_TRANSFORMERS = ">=5.17,<5.26"

# Newest name first: the cache argument of models and decoder layers across supported releases.
CACHE_ARGUMENTS = ("cache", "past_key_values")


def incompatible(what: str) -> TransformersCompatibilityError:
    """The error for an upstream convention spts does not recognise; ``what`` says what was seen."""
    return TransformersCompatibilityError(
        f"{what}. spts supports transformers{SUPPORTED_TRANSFORMERS}; this is transformers {transformers.__version__}. "
        f"Install a supported release (pip install 'transformers{SUPPORTED_TRANSFORMERS}'), and please report the "
        "failing release with this message (see the README's 'Supported transformers')."
    )


def cache_argument(kwargs: Mapping[str, Any]) -> tuple[str, Any]:
    """The cache a model or decoder layer was called with, and the argument name it came under.

    Returns the newest name and None when no cache was passed."""
    given = [name for name in CACHE_ARGUMENTS if kwargs.get(name) is not None]
    if len(given) > 1:
        raise incompatible(f"a layer received a cache under both {given[0]!r} and {given[1]!r}")
    name = given[0] if given else CACHE_ARGUMENTS[0]
    return name, kwargs.get(name)


def output_cache(output: Any) -> Any:
    """The cache in a model output (``cache`` since transformers 5.24, ``past_key_values`` before), or None.

    Read as a mapping so that the deprecated alias does not warn."""
    for name in CACHE_ARGUMENTS:
        if isinstance(output, Mapping) and output.get(name) is not None:
            return output[name]
    return None


def model_cache_argument(model: Any) -> str:
    """The name under which ``model``'s forward takes a cache in the installed transformers."""
    parameters = inspect.signature(model.forward).parameters
    for name in CACHE_ARGUMENTS:
        if name in parameters:
            return name
    raise incompatible(f"{type(model).__name__}.forward takes none of the cache arguments {CACHE_ARGUMENTS}")
