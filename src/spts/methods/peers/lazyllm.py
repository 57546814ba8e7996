"""LazyLLM-style progressive pruning (Fu et al. 2024, arXiv 2407.14057) as an SPTS schedule.

At a few pruning layers, the tokens to which the last token attended least in the layer before (softmax
attention, averaged over heads) leave the prefill: later layers neither compute nor cache them, and each pruning
layer keeps fewer. That is SPTS's multi-stage pruning with nothing skipped inside a stage: stage boundaries at the
pruning layers, the stage before the first one starting one layer earlier (the probe runs in the layer before each
boundary), per-stage budgets = the tokens kept, no margin:

    start_layer=P1-1, stage_boundaries=(P1, P2, P3), budgets=(1.0, r1, r2, r3), delta=0,
    skip_attention=False, skip_ffn=False, prune=True

LazyLLM's Aux Cache (reviving pruned tokens during decoding) is not implemented: decoding reads the pruned cache,
as SPTS's does. The paper published no code and no single schedule; ours is in docs/peers.md.
"""

from __future__ import annotations

from spts.config import SPTSConfig

# [decision] Prune at a quarter, half and three quarters of the depth (LLaMA-2-7B: layers 8, 16, 24 of 32),
# keeping 60%, 40%, 20% of the prompt: "keeps more tokens at earlier layers and gradually reduces the number
# of tokens towards the end" (the paper's progressive pruning), not a published setting.
PRUNE_DEPTHS = (0.25, 0.5, 0.75)
KEEP_FRACTIONS = (0.6, 0.4, 0.2)


def lazyllm_config(num_layers: int, scale: float = 1.0) -> SPTSConfig:
    """The schedule for a model of ``num_layers`` layers, kept fractions multiplied by ``scale`` (capped at 1)."""
    if not scale > 0:
        raise ValueError(f"lazyllm scale must be positive, got {scale}")
    layers: list[int] = []
    for depth in PRUNE_DEPTHS:
        # At least layer 2 (the probe runs in the layer before, and SPTS starts at layer 1), strictly increasing.
        layer = max(round(depth * num_layers), layers[-1] + 1 if layers else 2)
        if layer < num_layers:
            layers.append(layer)
    if len(layers) < len(PRUNE_DEPTHS):
        raise ValueError(f"lazyllm needs at least {len(PRUNE_DEPTHS) + 2} layers; this model has {num_layers}")
    return SPTSConfig(
        start_layer=layers[0] - 1,
        stage_boundaries=tuple(layers),
        budgets=(1.0, *(min(1.0, keep * scale) for keep in KEEP_FRACTIONS)),
        delta=0,
        skip_attention=False,
        skip_ffn=False,
        prune=True,
        name=f"lazyllm@{scale:g}",
    )
