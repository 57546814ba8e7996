"""vLLM model classes with SPTS prefill: vLLM's own LLaMA, Qwen2 and Qwen3 classes, changed only in the decoder
layers from ``start_layer`` on, and only when the deployment switches SPTS on (``settings.py``).

Importing this module imports vLLM; the plugin registers the classes by name so vLLM imports them lazily.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from vllm.model_executor.models.llama import LlamaForCausalLM
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM

from spts.calibration.proxy_file import LTPProxies, ProxyFileError, load_proxies
from spts.policies import AttentionScoreFFN, FFNScorer
from spts.policies.ltp import LTPScorer

from .adapter import VLLMAdapter, keep_projection_weights
from .settings import SPTSVLLMConfigError, VLLMSettings, check_engine, parse_settings, raw_settings
from .skipping import SPTSModelState

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
# Under vLLM's logger, so its handlers and format apply (a logger outside "vllm." prints nothing below WARNING).
logger = logging.getLogger("vllm.spts")


class _SPTSModelMixin:
    """What the three families share: set up SPTS after construction, copy weights after loading, wrap forward."""

    spts: SPTSModelState | None
    _spts_settings: VLLMSettings | None

    def _spts_setup(self, vllm_config: Any, qk_norm: bool) -> None:
        self.spts, self._spts_settings = None, None
        raw = raw_settings(vllm_config)
        if raw is None:
            return  # SPTS off: the stock model, untouched
        check_engine(vllm_config)
        hf_config = vllm_config.model_config.hf_config
        settings = parse_settings(raw, hf_config)
        model_type = getattr(hf_config, "model_type", None)
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise SPTSVLLMConfigError(
                f"SPTS in vLLM supports model types {', '.join(SUPPORTED_MODEL_TYPES)}; this model is {model_type!r}"
            )
        if vllm_config.quant_config is not None:
            raise SPTSVLLMConfigError(
                "SPTS in vLLM supports unquantized weights only (it runs each layer's q/k/v projections on its own); "
                f"this deployment uses {type(vllm_config.quant_config).__name__}"
            )
        layers = self.model.layers  # type: ignore[attr-defined]
        skipping = list(settings.config.skipping_layers(len(layers)))
        for idx in skipping:
            attention = layers[idx].self_attn
            backend = attention.attn.attn_backend.get_name()
            if backend != "CPU_ATTN":
                raise SPTSVLLMConfigError(
                    f"SPTS in vLLM runs on vLLM's CPU attention backend (CPU_ATTN) only for now; this engine uses "
                    f"{backend}, whose metadata SPTS does not know how to rebuild per layer (see docs/vllm.md)"
                )
            window = getattr(attention.attn, "sliding_window", None)
            if window is not None and window != -1:
                raise SPTSVLLMConfigError(
                    f"layer {idx} uses sliding-window attention (window {window}), which SPTS does not support in "
                    "skipping layers; serve a checkpoint without a sliding window or start skipping after it"
                )
            rotary = attention.rotary_emb
            if not getattr(rotary, "is_neox_style", False) or getattr(rotary, "rotary_dim", None) != attention.head_dim:
                raise SPTSVLLMConfigError(
                    f"layer {idx}'s rotary embedding ({type(rotary).__name__}) is not full-dimension neox RoPE, the "
                    "only kind SPTS's probe reproduces"
                )
        proxies = _load_proxies(settings.proxies, hf_config) if settings.proxies else None
        self._spts_settings = settings
        scorer: FFNScorer = AttentionScoreFFN()
        if proxies is not None:
            scorer = LTPScorer(
                proxies={
                    i: proxies.layers[i].to(torch.device("cpu"), vllm_config.model_config.dtype) for i in skipping
                },
                activations=dict.fromkeys(skipping, F.silu),  # these families' FFN act: SiLU (vLLM refuses others)
                variant=proxies.meta.variant,
            )
            self._spts_proxies = proxies
        head_dim = layers[skipping[0]].self_attn.head_dim
        state = SPTSModelState(
            settings.config,
            VLLMAdapter(head_dim, qk_norm=qk_norm),
            scorer,
            num_layers=len(layers),
            min_prompt_tokens=settings.min_prompt_tokens,
            dtype=vllm_config.model_config.dtype,
        )
        for idx in skipping:
            layer = layers[idx]
            state.layer_names[idx] = layer.self_attn.attn.layer_name
            layer.forward = partial(state.layer_forward, idx, layer, layer.forward)
        self.spts = state
        logger.info(
            "SPTS prefill on: %s (layers %d-%d skip; prompts of at least %d tokens; FFN scored by %s)",
            settings.config,
            skipping[0],
            skipping[-1],
            settings.min_prompt_tokens,
            f"LTP proxies {settings.proxies}" if proxies is not None else "the attention probe",
        )

    def _spts_after_load(self) -> None:
        if self.spts is None:
            return
        layers = self.model.layers  # type: ignore[attr-defined]
        for idx in self.spts.layer_names:
            keep_projection_weights(layers[idx])
        proxies: LTPProxies | None = getattr(self, "_spts_proxies", None)
        if proxies is not None:
            proxies.check_model(_hf_view(self.config, layers))  # type: ignore[attr-defined]

    def _spts_forward(self, forward, *args: Any, **kwargs: Any):
        if self.spts is None:
            return forward(*args, **kwargs)
        self.spts.begin()
        try:
            return forward(*args, **kwargs)
        finally:
            self.spts.end()


def _load_proxies(path: Path, hf_config: Any) -> LTPProxies:
    """Load LTP proxies and check what can be checked before the weights are in (the fingerprint comes after)."""
    try:
        proxies = load_proxies(path)
    except ProxyFileError as error:
        raise SPTSVLLMConfigError(str(error)) from None
    expected = {
        "model_type": hf_config.model_type,
        "num_layers": hf_config.num_hidden_layers,
        "hidden_size": hf_config.hidden_size,
        "intermediate_size": hf_config.intermediate_size,
    }
    for name, want in expected.items():
        have = getattr(proxies.meta, name)
        if have != want:
            raise SPTSVLLMConfigError(
                f"the LTP proxies in {path} were built for another model: {name} is {have!r} in the proxies but "
                f"{want!r} in the served model; calibrate proxies for this model with `spts calibrate --model "
                f"<this model's folder> --out <new proxy file>`"
            )
    return proxies


def _hf_view(hf_config: Any, layers: nn.ModuleList) -> SimpleNamespace:
    """The served weights in the transformers layout that ``spts.calibration`` fingerprints (gate, up, down)."""
    views = []
    for layer in layers:
        gate_up = layer.mlp.gate_up_proj.weight.detach()
        half = gate_up.shape[0] // 2
        weights = {"gate_proj": gate_up[:half], "up_proj": gate_up[half:], "down_proj": layer.mlp.down_proj.weight}
        mlp = SimpleNamespace(**{name: SimpleNamespace(weight=w) for name, w in weights.items()})
        views.append(SimpleNamespace(mlp=mlp))
    return SimpleNamespace(
        config=hf_config, model=SimpleNamespace(layers=views), name_or_path=getattr(hf_config, "name_or_path", "")
    )


class SPTSLlamaForCausalLM(_SPTSModelMixin, LlamaForCausalLM):
    def __init__(self, *, vllm_config: Any, prefix: str = "", **kwargs: Any) -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        self._spts_setup(vllm_config, qk_norm=False)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = super().load_weights(weights)
        self._spts_after_load()
        return loaded

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> Any:
        return self._spts_forward(super().forward, input_ids, positions, intermediate_tensors, inputs_embeds)


class SPTSQwen2ForCausalLM(_SPTSModelMixin, Qwen2ForCausalLM):
    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._spts_setup(vllm_config, qk_norm=False)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = super().load_weights(weights)
        self._spts_after_load()
        return loaded

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> Any:
        return self._spts_forward(super().forward, input_ids, positions, intermediate_tensors, inputs_embeds)


class SPTSQwen3ForCausalLM(_SPTSModelMixin, Qwen3ForCausalLM):
    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self._spts_setup(vllm_config, qk_norm=True)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = super().load_weights(weights)
        self._spts_after_load()
        return loaded

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: Any = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> Any:
        return self._spts_forward(super().forward, input_ids, positions, intermediate_tensors, inputs_embeds)


ARCHITECTURES = {
    "LlamaForCausalLM": SPTSLlamaForCausalLM,
    "Qwen2ForCausalLM": SPTSQwen2ForCausalLM,
    "Qwen3ForCausalLM": SPTSQwen3ForCausalLM,
}


def spts_report(model: nn.Module) -> dict[str, Any]:
    """What SPTS did in this worker, for ``LLM.apply_model(spts_report)``: whether it is on, how many prefills
    skipped, and the last step's prefills (prompt length and K/V tokens each skipping layer cached)."""
    state: SPTSModelState | None = getattr(model, "spts", None)
    if state is None:
        return {"enabled": False, "prefills": 0, "last": []}
    last = [
        {"prompt_length": s.prompt_length, "kv_tokens": {layer.layer_idx: layer.kv_tokens for layer in s.layers}}
        for s in state.last_prefills
    ]
    return {"enabled": True, "prefills": state.prefills_done, "last": last}
