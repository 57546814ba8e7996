"""Selection policies: which tokens a skipping layer computes (PAP), which run the FFN, the schedule (MSDP)."""

from spts.policies.ffn import AttentionScoreFFN, FFNScorer
from spts.policies.probe import HEAD_AGGREGATIONS, attention_probe_scores, layer_inputs, pool_scores, probe_layer_input
from spts.policies.schedule import LayerPlan, plan_layers
from spts.policies.selection import protected_tokens, top_tokens

__all__ = [
    "HEAD_AGGREGATIONS",
    "AttentionScoreFFN",
    "FFNScorer",
    "LayerPlan",
    "attention_probe_scores",
    "layer_inputs",
    "plan_layers",
    "pool_scores",
    "probe_layer_input",
    "protected_tokens",
    "top_tokens",
]
