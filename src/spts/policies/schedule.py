"""MSDP schedule: for one prompt, what each skipping layer computes and where candidates are pruned."""

from __future__ import annotations

from dataclasses import dataclass, replace

from spts.config import SPTSConfig


@dataclass(frozen=True)
class LayerPlan:
    """What a skipping layer does for a prompt of a given length.

    ``candidates``: tokens still in play in this layer (after any pruning it does).
    ``prune_to``: set when this layer opens a stage and MSDP drops candidates there.
    ``budget``: active tokens for attention and FFN, at most ``candidates``.
    ``scores_needed_next``: the next layer prunes, so this layer must leave fresh probe scores.
    """

    layer_idx: int
    stage: int
    candidates: int
    budget: int
    prune_to: int | None
    scores_needed_next: bool


def plan_layers(config: SPTSConfig, num_layers: int, prompt_length: int) -> dict[int, LayerPlan]:
    """The plan of every skipping layer, keyed by layer index.

    Token counts depend only on the config and the prompt length, never on the data, so the whole
    schedule is known before the first skipping layer runs.
    """
    starts = set(config.stage_boundaries)
    candidates = prompt_length
    plans: dict[int, LayerPlan] = {}
    for layer_idx in config.skipping_layers(num_layers):
        stage = config.stage_of_layer(layer_idx)
        assert stage is not None
        prune_to = None
        if config.prune and layer_idx in starts:
            keep = config.pruning_keep(stage, prompt_length)
            if keep < candidates:
                prune_to = candidates = keep
        plans[layer_idx] = LayerPlan(
            layer_idx=layer_idx,
            stage=stage,
            candidates=candidates,
            budget=min(candidates, config.stage_budget(stage, prompt_length)),
            prune_to=prune_to,
            scores_needed_next=False,
        )
    for layer_idx, plan in plans.items():
        following = plans.get(layer_idx + 1)
        if following is not None and following.prune_to is not None:
            plans[layer_idx] = replace(plan, scores_needed_next=True)
    return plans
