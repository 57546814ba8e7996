"""Offline LTP calibration: channel importance on calibration text, then a truncated SVD per layer.

Nothing is trained. The model runs unmodified over calibration text; for each layer the FFN's
intermediate activations ``z = |act(x W_gate) * (x W_up)|`` give each channel an importance (the
mean of its top-``rho`` fraction), the top ``d_low`` channels are kept, and the kept slices of
``W_gate`` and ``W_up`` are factorised with rank ``r``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from spts.adapters import adapter_for
from spts.calibration.proxy_file import LTPProxies, ProxyMeta, model_identity, require_unmodified
from spts.errors import SPTSError
from spts.policies.ltp import VARIANTS, LayerProxy

# (intermediate, hidden) -> (d_low, rank) of the paper's models (SPEC.md).
_PAPER_SIZES = {(14336, 4096): (512, 192), (18944, 3584): (1024, 256)}


def default_sizes(config) -> tuple[int, int]:
    """``(d_low, rank)`` for a model: the paper's values for its models, the same proportions elsewhere.

    LLaMA-3.1-8B keeps 512 of 14336 channels (1/28) at rank 192 for hidden size 4096 (~1/21).
    """
    key = (config.intermediate_size, config.hidden_size)
    if key in _PAPER_SIZES:
        return _PAPER_SIZES[key]
    d_low = max(64, 64 * round(config.intermediate_size / 28 / 64))
    rank = max(32, 32 * round(config.hidden_size / 21.33 / 32))
    return min(d_low, config.intermediate_size), min(rank, d_low, config.hidden_size)


@dataclass(frozen=True)
class CalibrationSettings:
    d_low: int
    rank: int
    rho: float = 0.2
    variant: str = "gate_up_down_norm"
    tokens: int = 16384
    seq_len: int = 1024

    def __post_init__(self) -> None:
        if not 0 < self.rho <= 1:
            raise ValueError(f"rho must be in (0, 1], got {self.rho}")
        if self.rank < 1 or self.d_low < 1 or self.rank > self.d_low:
            raise ValueError(f"need 1 <= rank <= d_low, got rank={self.rank}, d_low={self.d_low}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.tokens < 1 or self.seq_len < 1:
            raise ValueError(f"tokens and seq_len must be >= 1, got {self.tokens}, {self.seq_len}")


def token_chunks(texts: Sequence[str] | torch.Tensor, tokenizer, tokens: int, seq_len: int) -> list[torch.Tensor]:
    """Calibration text as (1, seq_len) id chunks, ``tokens`` in all (texts are joined, then cut)."""
    if isinstance(texts, torch.Tensor):
        ids = texts.reshape(-1)
    else:
        if tokenizer is None:
            raise ValueError("calibration texts given as strings need a tokenizer (pass tokenizer=...)")
        if not texts:
            raise ValueError("no calibration texts given")
        ids = torch.tensor(
            [t for text in texts for t in tokenizer(text, add_special_tokens=False).input_ids], dtype=torch.long
        )
    ids = ids[:tokens]
    if ids.numel() < min(tokens, seq_len):
        raise ValueError(f"calibration text has only {ids.numel()} tokens; give at least {min(tokens, seq_len)}")
    return [ids[i : i + seq_len][None] for i in range(0, ids.numel(), seq_len) if ids[i : i + seq_len].numel() > 1]


def channel_importance(model: nn.Module, chunks: Sequence[torch.Tensor], rho: float, progress: bool = True):
    """Per layer, per intermediate channel: the mean over chunks of the mean of its top-rho ``z`` values.

    Averaging per-chunk top-rho means keeps memory at one vector per layer however much text is
    used (the exact global top-rho would need every activation kept).
    """
    adapter = adapter_for(model)
    require_unmodified(model)
    sums: dict[int, torch.Tensor] = {}
    handles = []
    for idx, layer in enumerate(adapter.layers()):

        def record(module, args, idx=idx):
            z = args[0].detach().abs().reshape(-1, args[0].shape[-1]).float()
            k = max(1, math.ceil(rho * z.shape[0]))
            top_mean = z.topk(k, dim=0).values.mean(0)
            sums[idx] = sums[idx] + top_mean if idx in sums else top_mean

        handles.append(adapter.mlp(layer).down_proj.register_forward_pre_hook(record))
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for chunk in tqdm(chunks, desc="calibration", unit="chunk", disable=not progress):
                model(chunk.to(device), use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return {idx: total / len(chunks) for idx, total in sums.items()}


def _low_rank(weight_rows: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x @ weight_rows.T ≈ (x @ u) @ v`` with u (hidden, r), v (r, d_low), by truncated SVD."""
    u, s, vh = torch.linalg.svd(weight_rows.T.float(), full_matrices=False)
    return u[:, :rank] * s[:rank], vh[:rank]


def build_layer_proxy(mlp: nn.Module, importance: torch.Tensor, d_low: int, rank: int) -> LayerProxy:
    if any(getattr(mlp, name).bias is not None for name in ("gate_proj", "up_proj", "down_proj")):
        raise SPTSError("LTP proxies support FFNs without biases (LLaMA, Qwen, Mistral); this FFN has biases")
    channels = importance.topk(d_low).indices.sort().values
    gate_u, gate_v = _low_rank(mlp.gate_proj.weight.detach()[channels], rank)
    up_u, up_v = _low_rank(mlp.up_proj.weight.detach()[channels], rank)
    down = mlp.down_proj.weight.detach()[:, channels].float()
    return LayerProxy(channels=channels.cpu(), gate_u=gate_u, gate_v=gate_v, up_u=up_u, up_v=up_v, down=down)


def calibrate(
    model: nn.Module,
    texts: Sequence[str] | torch.Tensor,
    tokenizer=None,
    *,
    d_low: int | None = None,
    rank: int | None = None,
    rho: float = 0.2,
    variant: str = "gate_up_down_norm",
    tokens: int = 16384,
    seq_len: int = 1024,
    source: str = "user texts",
    progress: bool = True,
) -> LTPProxies:
    """Build LTP proxies for every layer of ``model`` from calibration ``texts`` (strings or token ids).

    Layer 0 is included for completeness though skipping never starts there; the file then serves any
    schedule. Sizes default to :func:`default_sizes`.
    """
    adapter = adapter_for(model)
    default_d_low, default_rank = default_sizes(model.config)
    settings = CalibrationSettings(
        d_low=d_low or default_d_low,
        rank=rank or default_rank,
        rho=rho,
        variant=variant,
        tokens=tokens,
        seq_len=seq_len,
    )
    if settings.d_low > model.config.intermediate_size:
        raise ValueError(f"d_low={settings.d_low} exceeds the FFN's {model.config.intermediate_size} channels")
    chunks = token_chunks(texts, tokenizer, settings.tokens, settings.seq_len)
    importance = channel_importance(model, chunks, settings.rho, progress)
    layers = {
        idx: build_layer_proxy(adapter.mlp(layer), importance[idx], settings.d_low, settings.rank)
        for idx, layer in enumerate(adapter.layers())
    }
    meta = ProxyMeta(
        **model_identity(model),
        d_low=settings.d_low,
        rank=settings.rank,
        rho=settings.rho,
        variant=settings.variant,
        source=source,
        tokens=sum(chunk.numel() for chunk in chunks),
    )
    return LTPProxies(layers=layers, meta=meta)
