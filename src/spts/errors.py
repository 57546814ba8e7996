"""Errors SPTS raises for inputs it cannot handle; each message says what to do instead."""


class SPTSError(ValueError):
    """Base class: every SPTS input error is also a ValueError."""


class UnsupportedModelError(SPTSError):
    """The model's family or one of its features (sliding window, attention backend) is not supported."""


class UnsupportedInputError(SPTSError):
    """A call SPTS cannot run faithfully: padded batches, empty prompts, a non-dynamic cache."""


class TransformersCompatibilityError(RuntimeError):
    """The installed transformers broke an assumption spts relies on (an argument renamed, a layer's cache not
    holding what the plan kept). Raised instead of returning results that could be silently wrong."""
