"""What a deployment asks of SPTS inside vLLM, and what vLLM settings it refuses.

SPTS is switched on per deployment through vLLM's ``additional_config`` (``LLM(..., additional_config=...)`` or
``vllm serve --additional-config '{...}'``) under the key ``"spts"``::

    {"spts": {"preset": "smollm2-135m"}}                       # a preset, as spts.enable(model, "smollm2-135m")
    {"spts": {"config": {"start_layer": 17, ...}}}             # SPTSConfig fields
    {"spts": {"file": "tuned.json", "proxies": "ltp.safetensors", "min_prompt_tokens": 2048}}

or, for tools that cannot pass ``additional_config``, a JSON file of the same object named by the environment
variable ``SPTS_VLLM_CONFIG``. Without either, vLLM runs stock: the model classes change nothing.

This module imports nothing from vLLM, so the checks can be read (and unit-tested) on their own; they read a
``VllmConfig`` by attribute only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from spts.config import SPTSConfig, is_config_file
from spts.errors import SPTSError

ENV_VAR = "SPTS_VLLM_CONFIG"
KEY = "spts"
_SOURCES = ("preset", "config", "file")
_OPTIONS = (*_SOURCES, "proxies", "min_prompt_tokens")
DEFAULT_MIN_PROMPT_TOKENS = 1024
"""Prompts shorter than this take vLLM's stock path: below ~1K tokens a prefill is cheap and the probe's own cost
would eat what skipping saves."""


class SPTSVLLMConfigError(SPTSError, ValueError):
    """The deployment's SPTS settings, or a vLLM setting SPTS cannot honour, refused at engine start."""


def engine_arguments(
    model: str | os.PathLike, max_model_len: int, spts: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` with the settings SPTS runs under (what :func:`check_engine` requires:
    eager mode, every prompt prefilled whole in one step, no prefix caching); with ``spts``, SPTS switched on by
    ``additional_config``. ``extra`` adds or overrides arguments (``dtype``, ``seed``, ...)."""
    arguments: dict[str, Any] = dict(
        model=str(model),
        enforce_eager=True,
        enable_chunked_prefill=False,
        enable_prefix_caching=False,
        max_model_len=max_model_len,
        max_num_batched_tokens=max_model_len,
    )
    if spts is not None:
        arguments["additional_config"] = {KEY: spts}
    return arguments | extra


@dataclass(frozen=True)
class VLLMSettings:
    """SPTS settings of one deployment."""

    config: SPTSConfig
    proxies: Path | None = None
    min_prompt_tokens: int = DEFAULT_MIN_PROMPT_TOKENS


def named_settings(name: str) -> dict[str, Any]:
    """The ``"spts"`` object for a preset name or a config file path (``.json``), as ``spts.enable`` takes them."""
    return {"file": name} if is_config_file(name) else {"preset": name}


def raw_settings(vllm_config: Any) -> dict[str, Any] | None:
    """The ``"spts"`` object of the deployment (additional_config first, then ``$SPTS_VLLM_CONFIG``), or None."""
    additional = getattr(vllm_config, "additional_config", None) or {}
    if not isinstance(additional, dict):
        additional = {}
    if KEY in additional and additional[KEY] is not None:
        raw = additional[KEY]
        origin = "additional_config['spts']"
    elif os.environ.get(ENV_VAR):
        path = Path(os.environ[ENV_VAR])
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SPTSVLLMConfigError(f"${ENV_VAR}={path} is not a readable JSON file ({error})") from None
        origin = f"${ENV_VAR} ({path})"
    else:
        return None
    if isinstance(raw, str):
        raw = named_settings(raw)
    if not isinstance(raw, dict):
        raise SPTSVLLMConfigError(f"{origin} must be an object such as {{'preset': 'smollm2-135m'}}, got {raw!r}")
    unknown = sorted(set(raw) - set(_OPTIONS))
    if unknown:
        raise SPTSVLLMConfigError(f"{origin} has unknown keys {unknown}; known: {', '.join(_OPTIONS)}")
    return raw


def parse_settings(raw: dict[str, Any], hf_config: Any) -> VLLMSettings:
    """Turn the ``"spts"`` object into settings, checked against the served model's HF config."""
    sources = [name for name in _SOURCES if raw.get(name) is not None]
    if len(sources) != 1:
        raise SPTSVLLMConfigError(
            f"the SPTS settings need exactly one of {', '.join(_SOURCES)} (a preset name, SPTSConfig fields, or a "
            f"config file from spts tune); got {sources or 'none'}"
        )
    source = sources[0]
    try:
        if source == "preset":
            config = SPTSConfig.preset(raw["preset"])
        elif source == "config":
            if not isinstance(raw["config"], dict):
                raise ValueError(f"'config' must be an object of SPTSConfig fields, got {raw['config']!r}")
            config = SPTSConfig(**raw["config"])
        else:
            config = SPTSConfig.from_file(raw["file"], SimpleNamespace(config=hf_config))
        config.validate_for(int(hf_config.num_hidden_layers))
    except (TypeError, ValueError) as error:
        raise SPTSVLLMConfigError(f"invalid SPTS settings ({source}): {error}") from None
    minimum = raw.get("min_prompt_tokens", DEFAULT_MIN_PROMPT_TOKENS)
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
        raise SPTSVLLMConfigError(f"min_prompt_tokens must be an int >= 1, got {minimum!r}")
    proxies = raw.get("proxies")
    return VLLMSettings(config=config, proxies=Path(proxies) if proxies else None, min_prompt_tokens=minimum)


def check_engine(vllm_config: Any) -> None:
    """Refuse the vLLM settings under which SPTS would silently compute something else than it promises."""
    scheduler = vllm_config.scheduler_config
    model_config = vllm_config.model_config
    parallel = vllm_config.parallel_config
    max_len = int(model_config.max_model_len)
    chunked = bool(scheduler.enable_chunked_prefill)
    if chunked or scheduler.max_num_batched_tokens < max_len:
        found = (
            "chunked prefill is on"
            if chunked
            else f"max_num_batched_tokens={scheduler.max_num_batched_tokens} is below max_model_len={max_len}, so a "
            "long prompt would be split"
        )
        raise SPTSVLLMConfigError(
            "SPTS needs each prompt whole in one step (its probe is the prompt's last token; a chunk's last token "
            f"would select for the wrong query), but {found}. Start vLLM with enable_chunked_prefill=False and "
            f"max_num_batched_tokens >= max_model_len (--no-enable-chunked-prefill --max-num-batched-tokens {max_len})"
        )
    if vllm_config.cache_config.enable_prefix_caching:
        raise SPTSVLLMConfigError(
            "SPTS cannot share cached prefixes: a skipping layer caches only the tokens it kept for one prompt, so a "
            "later request reusing those blocks would read another prompt's selection. Start vLLM with "
            "enable_prefix_caching=False (--no-enable-prefix-caching)"
        )
    if vllm_config.speculative_config is not None:
        raise SPTSVLLMConfigError(
            "SPTS does not support speculative decoding (draft tokens would be verified against a compressed cache "
            "whose layout the drafter does not know); remove speculative_config"
        )
    if getattr(vllm_config, "kv_transfer_config", None) is not None:
        raise SPTSVLLMConfigError(
            "SPTS does not support KV connectors (kv_transfer_config): a skipping layer's blocks hold only its kept "
            "tokens, packed, which another engine would read as a full prompt; remove kv_transfer_config"
        )
    tp, pp = int(parallel.tensor_parallel_size), int(parallel.pipeline_parallel_size)
    if tp > 1 or pp > 1:
        raise SPTSVLLMConfigError(
            f"SPTS runs on one rank for now (tensor_parallel_size={tp}, pipeline_parallel_size={pp}): under tensor "
            "parallelism each rank holds a slice of the heads and would pick different tokens from its partial probe "
            "scores. Start vLLM with tensor_parallel_size=1 and pipeline_parallel_size=1 (see docs/vllm.md for what "
            "multi-rank support needs)"
        )
    compilation = vllm_config.compilation_config
    if int(getattr(compilation.mode, "value", compilation.mode)) != 0:
        raise SPTSVLLMConfigError(
            "SPTS's skipping layers choose tokens from the data, which torch.compile would freeze into one graph; "
            f"start vLLM with enforce_eager=True (--enforce-eager); compilation mode is {compilation.mode!r}"
        )
