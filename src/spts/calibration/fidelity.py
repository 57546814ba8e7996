"""How well a proxy ranks tokens by their true FFN update, on held-out text.

For every layer the unmodified model runs over held-out text; we record the true ``||FFN(x)||``
of each token, each proxy variant's prediction, the attention probe's score (what the FFN policy
uses without LTP) and a random score, and compare rankings: Spearman correlation and the recall
of the true top-M inside each predictor's top-M.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from spts.adapters import adapter_for
from spts.calibration.proxy_file import LTPProxies, require_unmodified
from spts.policies import probe_layer_input
from spts.policies.ltp import VARIANTS


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation of two 1-D tensors (ties are rare for these continuous scores)."""
    ra = a.double().argsort().argsort().double()
    rb = b.double().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def top_recall(predicted: torch.Tensor, true: torch.Tensor, m: int) -> float:
    """Share of the true top-m found in the predicted top-m."""
    hits = set(predicted.topk(m).indices.tolist()) & set(true.topk(m).indices.tolist())
    return len(hits) / m


@dataclass
class FidelityReport:
    """Per-layer Spearman and top-M recall of each predictor, plus each variant's cost."""

    tokens: int
    top_m: int
    spearman: dict[str, dict[int, float]] = field(default_factory=dict)
    recall: dict[str, dict[int, float]] = field(default_factory=dict)
    proxy_flops: dict[str, int] = field(default_factory=dict)
    ffn_flops: int = 0

    def mean(self, metric: str, predictor: str, from_layer: int = 1) -> float:
        values = [v for layer, v in getattr(self, metric)[predictor].items() if layer >= from_layer]
        return sum(values) / len(values)

    @property
    def predictors(self) -> list[str]:
        return list(self.spearman)

    def best_variant(self, variants: tuple[str, ...] = ("gate_up", "gate_up_down_norm")) -> str:
        """The variant with the best mean Spearman among those of equal (lowest) cost."""
        return max(variants, key=lambda v: self.mean("spearman", v))

    def to_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "top_m": self.top_m,
            "ffn_flops_per_token": self.ffn_flops,
            "proxy_flops_per_token": self.proxy_flops,
            "proxy_cost_share": {v: f / self.ffn_flops for v, f in self.proxy_flops.items()},
            "mean_spearman": {p: self.mean("spearman", p) for p in self.predictors},
            "mean_recall": {p: self.mean("recall", p) for p in self.predictors},
            "spearman": self.spearman,
            "recall": self.recall,
        }


def fidelity_report(
    model: nn.Module, proxies: LTPProxies, eval_ids: torch.Tensor, top_fraction: float = 0.1, seed: int = 0
) -> FidelityReport:
    """Compare predictors of ``||FFN(x)||`` per layer on ``eval_ids`` (1, n) with the unmodified model."""
    adapter = adapter_for(model)
    require_unmodified(model)
    n = eval_ids.shape[1]
    report = FidelityReport(tokens=n, top_m=max(1, math.ceil(top_fraction * n)))
    predictors = [*VARIANTS, "attention", "random"]
    for name in predictors:
        report.spearman[name], report.recall[name] = {}, {}
    generator = torch.Generator().manual_seed(seed)
    attention_scores: dict[int, torch.Tensor] = {}
    handles = []

    def probe(module, args, kwargs, idx):
        hidden = args[0] if args else kwargs["hidden_states"]
        attention_scores[idx] = probe_layer_input(adapter, module, hidden, kwargs["position_embeddings"])[0]

    def compare(module, args, output, idx):
        x = args[0][0]
        true = output[0].float().norm(dim=-1)
        proxy = proxies.layers[idx].to(x.device, x.dtype)
        predictions = {v: proxy.magnitude(x, module.act_fn, v) for v in VARIANTS}
        predictions["attention"] = attention_scores.pop(idx)
        predictions["random"] = torch.rand(n, generator=generator)
        for name, predicted in predictions.items():
            report.spearman[name][idx] = spearman(predicted.cpu(), true.cpu())
            report.recall[name][idx] = top_recall(predicted.cpu(), true.cpu(), report.top_m)

    for idx, layer in enumerate(adapter.layers()):
        if idx not in proxies.layers:
            continue
        handles.append(layer.register_forward_pre_hook(lambda m, a, k, idx=idx: probe(m, a, k, idx), with_kwargs=True))
        handles.append(adapter.mlp(layer).register_forward_hook(lambda m, a, o, idx=idx: compare(m, a, o, idx)))
    try:
        with torch.inference_mode():
            model(eval_ids.to(next(model.parameters()).device), use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    any_proxy = next(iter(proxies.layers.values()))
    report.proxy_flops = {v: any_proxy.flops_per_token(v) for v in VARIANTS}
    report.ffn_flops = 2 * 3 * model.config.hidden_size * model.config.intermediate_size
    return report
