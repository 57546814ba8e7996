"""Turning SPTS on and off for one model instance.

Only the instance is patched, never the class: each skipping layer gets an instance-level
``forward`` and the decoder gets a pre/post hook pair. ``disable`` puts back exactly what was
there (including a forward that accelerate or another tool had already installed).
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from spts.adapters import DecoderAdapter, adapter_for
from spts.calibration.proxy_file import LTPProxies, ProxyFileError, load_proxies, rebuild_command
from spts.config import SPTSConfig
from spts.errors import UnsupportedInputError
from spts.policies import AttentionScoreFFN, FFNScorer, plan_layers
from spts.policies.ltp import LTPScorer
from spts.runtime.checks import (
    check_attention_backend,
    check_cache_matches_plan,
    check_model,
    check_prefill_inputs,
)
from spts.runtime.padded_prefill import PaddedPrefill
from spts.runtime.padding import decode_mask, layout_of, left_padded_lengths
from spts.runtime.prefill import PrefillContext, PrefillState, skipping_prefill
from spts.runtime.sparse_attention import sparse_attention_for
from spts.runtime.stats import LayerStats, PrefillStats
from spts.runtime.timing import IntervalTimer
from spts.runtime.transformers_api import cache_argument, incompatible, output_cache

_RUNTIME_ATTR = "_spts_runtime"
ProxySpec = LTPProxies | FFNScorer | str | os.PathLike | None


class SPTSRuntime:
    """The SPTS state attached to one model: its config, policies, patches and last statistics."""

    def __init__(
        self,
        model: nn.Module,
        adapter: DecoderAdapter,
        config: SPTSConfig,
        ffn_scorer: FFNScorer,
        selection: str = "probe",
    ) -> None:
        self.model = model
        self.adapter = adapter
        self.config = config
        self.ffn_scorer = ffn_scorer
        self.selection = selection
        self.num_layers = len(adapter.layers())
        self.state: PrefillState | PaddedPrefill | None = None
        self.last_stats: PrefillStats | None = None
        self._saved_forwards: dict[int, Any] = {}
        self._warned_beyond_window = False
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self.sparse = sparse_attention_for(model, adapter, config)

    # ---------------------------------------------------------------- patching
    def install(self) -> None:
        decoder = self.adapter.decoder()
        self._hooks.append(decoder.register_forward_pre_hook(self._before_forward, with_kwargs=True))
        self._hooks.append(decoder.register_forward_hook(self._after_forward, always_call=True))
        for idx in self.config.skipping_layers(self.num_layers):
            layer = self.adapter.layers()[idx]
            # Keep whatever instance forward was there (e.g. accelerate's device hook) to restore it.
            self._saved_forwards[idx] = layer.__dict__.get("forward")
            original = layer.forward
            layer.forward = functools.partial(self._layer_forward, idx, layer, original)

    def uninstall(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        layers = self.adapter.layers()
        for idx, saved in self._saved_forwards.items():
            if saved is None:
                del layers[idx].forward
            else:
                layers[idx].forward = saved
        self._saved_forwards.clear()
        self.state = None
        if self.sparse is not None:
            self.sparse.end()

    @property
    def attention_function(self) -> Callable:
        from transformers.models.llama.modeling_llama import eager_attention_forward

        return ALL_ATTENTION_FUNCTIONS.get_interface(self.model.config._attn_implementation, eager_attention_forward)

    # ---------------------------------------------------------------- per forward
    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self.state = None
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        tokens = input_ids if input_ids is not None else embeds
        if tokens is None:
            return
        _, cache = cache_argument(kwargs)
        if cache is not None and cache.get_seq_length() > 0:
            return  # continuing from a cache: new tokens are appended densely (see _layer_forward)
        batch, length = tokens.shape[0], tokens.shape[1]
        if length == 0:
            raise UnsupportedInputError("empty prompt: SPTS needs at least one token to prefill")
        check_attention_backend(self.model)
        if kwargs.get("output_attentions") or getattr(self.model.config, "output_attentions", False):
            raise UnsupportedInputError(
                "output_attentions is not supported with SPTS: skipping layers attend among a subset of tokens and "
                "return no full attention map; disable SPTS (spts.disable) to inspect attention"
            )
        check_prefill_inputs(kwargs.get("attention_mask"), cache)
        lengths = left_padded_lengths(kwargs.get("attention_mask"))  # None: no row is padded
        self._warn_if_beyond_context_window(length)
        stats = PrefillStats(
            prompt_length=length,
            batch_size=batch,
            probe_timer=IntervalTimer(tokens.device),
            total_timer=IntervalTimer(tokens.device),
        )
        stats.layers.extend(LayerStats(i, None, length, length, length, length) for i in range(self.config.start_layer))
        stats.total_timer.start()
        attention_function = self.attention_function
        if self.sparse is not None:
            attention_function = self.sparse.wrap(attention_function)
        context = PrefillContext(
            adapter=self.adapter,
            config=self.config,
            attention_function=attention_function,
            attn_implementation=self.model.config._attn_implementation,
            ffn_scorer=self.ffn_scorer,
            selection=self.selection,
        )
        if lengths is not None:
            self.state = PaddedPrefill.start(
                context, stats, self.num_layers, kwargs["attention_mask"], lengths, kwargs.get("position_ids")
            )
            return
        self.state = PrefillState(
            context=context,
            plans=plan_layers(self.config, self.num_layers, length),
            candidates=None,
            scores=None,
            stats=stats,
        )
        if self.sparse is not None:
            self.sparse.begin(stats)

    def _warn_if_beyond_context_window(self, length: int) -> None:
        # Warn rather than refuse: RoPE scaling or a user's own reasons may make longer prompts work, but
        # with skipping, a model out of its depth fails even more quietly than the full model.
        window = getattr(self.model.config, "max_position_embeddings", None)
        if self._warned_beyond_window or not isinstance(window, int) or length <= window:
            return
        self._warned_beyond_window = True
        rope_scaling = getattr(self.model.config, "rope_scaling", None)
        warnings.warn(
            f"the prompt has {length} tokens, more than the model's context window (max_position_embeddings="
            f"{window}; rope_scaling={rope_scaling}). Positions beyond the window are outside what the model was "
            "trained on, and SPTS selects tokens with the same attention: check answers at this length against the "
            "full model, or shorten the prompt. (Warned once per enabled model.)",
            UserWarning,
            stacklevel=4,
        )

    def _after_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        state, self.state = self.state, None
        if self.sparse is not None:
            self.sparse.end()
        if state is None:
            return
        state.stats.total_timer.stop()
        length = state.stats.prompt_length
        state.stats.layers.extend(
            LayerStats(i, None, length, length, length, length)
            for i in range(self.config.skipping_layers(self.num_layers).stop, self.num_layers)
        )
        self.last_stats = state.stats
        if output is not None and isinstance(state, PaddedPrefill):
            state.finish(output_cache(output), self.num_layers)
        if output is not None:  # None: the forward raised, and that error is the one to see
            check_cache_matches_plan(state.stats, output_cache(output), self.num_layers)

    def _layer_forward(
        self,
        layer_idx: int,
        layer: nn.Module,
        original_forward: Callable,
        hidden_states: torch.Tensor,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if args:
            raise incompatible(
                f"decoder layer {layer_idx} was called with {len(args)} positional arguments after the hidden states; "
                "spts expects the mask, positions and cache by keyword"
            )
        cache_name, cache = cache_argument(kwargs)
        position_embeddings = kwargs.get("position_embeddings")
        if self.state is not None:
            if position_embeddings is None:
                raise incompatible(f"decoder layer {layer_idx} received no position_embeddings (rotary cos/sin)")
            if isinstance(self.state, PaddedPrefill):
                return self.state.layer(layer_idx, layer, hidden_states, position_embeddings, cache)
            return skipping_prefill(self.state, layer_idx, layer, hidden_states, position_embeddings, cache)
        # Decoding (or appending to an existing cache): every new token is computed, but this layer's
        # cache holds fewer keys than the mask was built for, so keep the mask's trailing columns:
        # the cached keys are all in the past of every new token.
        attention_mask = kwargs.get("attention_mask")
        layout = layout_of(cache) if cache is not None else None
        if layout is not None:
            # A padded prefill's cache: this layer's prompt slots are its rows' kept tokens, left-padded.
            additive = hidden_states.dtype if self.model.config._attn_implementation == "eager" else None
            kwargs["attention_mask"] = decode_mask(
                layout, layer_idx, attention_mask, cache.get_seq_length(layer_idx), hidden_states.shape[1], additive
            )
        elif isinstance(attention_mask, torch.Tensor) and cache is not None:
            kv_length = cache.get_seq_length(layer_idx) + hidden_states.shape[1]
            if attention_mask.shape[-1] > kv_length:
                kwargs["attention_mask"] = attention_mask[..., -kv_length:]
        if cache is not None:
            kwargs[cache_name] = cache
        return original_forward(hidden_states, **kwargs)


def ffn_scorer(model: nn.Module, config: SPTSConfig, proxies: ProxySpec) -> FFNScorer:
    """The FFN scorer :func:`enable` would build for ``proxies``: attention alone, a given scorer, or LTP from
    proxies/a proxy file (loaded, checked against the model and moved to its device). Build it once and
    pass it as ``proxies`` to enable SPTS repeatedly without paying for those checks each time (benchmarks)."""
    adapter = adapter_for(model)
    if proxies is None:
        return AttentionScoreFFN()
    if isinstance(proxies, str | os.PathLike):
        proxies = load_proxies(proxies)
    if isinstance(proxies, LTPProxies):
        proxies.check_model(model)
        skipping = config.skipping_layers(len(adapter.layers()))
        missing = [i for i in skipping if i not in proxies.layers]
        if missing:
            source = f" in {proxies.path}" if proxies.path else ""
            raise ProxyFileError(
                f"the LTP proxies{source} lack layers {missing}, which this config skips; rebuild them for every "
                f"layer: {rebuild_command(proxies.path, model)}"
            )
        parameter = next(model.parameters())
        layers = adapter.layers()
        return LTPScorer(
            proxies={i: proxies.layers[i].to(parameter.device, parameter.dtype) for i in skipping},
            activations={i: adapter.mlp(layers[i]).act_fn for i in skipping},
            variant=proxies.meta.variant,
        )
    if isinstance(proxies, FFNScorer):
        return proxies
    raise TypeError(
        "proxies must be LTP proxies (spts.calibration.LTPProxies), a proxy file path, or an FFNScorer "
        f"(an object with needs_inputs, reuses_attention_selection and score()); got {type(proxies).__name__}"
    )


def enable(
    model: nn.Module,
    config: SPTSConfig | str | os.PathLike | None = None,
    proxies: ProxySpec = None,
    selection: str = "probe",
) -> nn.Module:
    """Make ``model``'s prefill skip tokens as SPTS does; returns the same (patched) model.

    Args:
        model: a supported transformers causal LM (see ``spts.supported_model_types()``).
        config: an :class:`SPTSConfig`, a preset name, the path of a ``.json`` config file (``spts tune``
            writes them; refused if made for another model), or None to derive one for this model
            (:meth:`SPTSConfig.for_model`).
        proxies: LTP proxies (:class:`spts.calibration.LTPProxies` or the path of a proxy file from
            ``spts calibrate``), checked against this model; or any :class:`FFNScorer`. None scores
            the FFN by the attention probe alone.
        selection: ``"probe"`` (SPTS) or ``"random"``: the same schedule with free, random token
            choices and no probe, the speed ceiling of a schedule for benchmarks (not for answers).

    Enabling an already enabled model replaces its config. Generation then decodes from the
    per-layer compressed cache; :func:`disable` restores the original behaviour exactly.
    """
    if isinstance(config, str | os.PathLike):
        config = SPTSConfig.named(config, model)
    adapter = adapter_for(model)
    if config is None:
        config = SPTSConfig.for_model(model)
    if not isinstance(config, SPTSConfig):
        raise TypeError(f"config must be an SPTSConfig, a preset name or a .json file, got {type(config).__name__}")
    if selection not in ("probe", "random"):
        raise ValueError(f"selection must be 'probe' or 'random', got {selection!r}")
    check_model(adapter, config, model)
    scorer = ffn_scorer(model, config, proxies) if selection == "probe" else AttentionScoreFFN()
    disable(model)
    runtime = SPTSRuntime(model, adapter, config, scorer, selection)
    runtime.install()
    model.__dict__[_RUNTIME_ATTR] = runtime
    return model


def disable(model: nn.Module) -> nn.Module:
    """Undo :func:`enable`; a no-op for a model that is not enabled."""
    runtime = model.__dict__.pop(_RUNTIME_ATTR, None)
    if runtime is not None:
        runtime.uninstall()
    return model


def is_enabled(model: nn.Module) -> bool:
    return _RUNTIME_ATTR in model.__dict__


def runtime_of(model: nn.Module) -> SPTSRuntime:
    runtime = model.__dict__.get(_RUNTIME_ATTR)
    if runtime is None:
        raise ValueError("SPTS is not enabled on this model; call spts.enable(model, config) first")
    return runtime


def last_stats(model: nn.Module) -> PrefillStats:
    """Statistics of the model's last SPTS prefill."""
    stats = runtime_of(model).last_stats
    if stats is None:
        raise ValueError("no SPTS prefill has run on this model since spts.enable")
    return stats


@contextlib.contextmanager
def enabled(
    model: nn.Module,
    config: SPTSConfig | str | os.PathLike | None = None,
    proxies: ProxySpec = None,
    selection: str = "probe",
) -> Iterator[nn.Module]:
    """``with spts.enabled(model, config): ...`` runs the block with SPTS, then puts back what was there before
    (the original model, or the SPTS setup it had)."""
    previous = model.__dict__.get(_RUNTIME_ATTR)
    enable(model, config, proxies, selection)
    try:
        yield model
    finally:
        disable(model)
        if previous is not None:
            previous.install()
            model.__dict__[_RUNTIME_ATTR] = previous
