"""FastKV's token-selective propagation (Jo et al. 2025, arXiv 2502.01068) as an SPTS schedule.

Layers ``[0, tsp_layer]`` compute every token and cache every token. At the TSP layer the last ``window`` queries'
attention (softmax, causal among the window, summed over the window and the heads, max-pooled over ``kernel``
neighbours) ranks the other tokens; the top ``keep - window`` and the window itself propagate, and from the next
layer on only they are computed and cached. That is exactly one SPTS stage boundary right after the TSP layer,
with the probe window, pooling and protected window of FastKV and no skipping inside stages:

    start_layer=L, stage_boundaries=(L+1,), budgets=(1.0, keep), delta=0,
    probe_tokens=window, pool_kernel=kernel, recent_tokens=window, skip_attention=False, skip_ffn=False

(the runtime probes layer L because layer L+1 prunes). Reference code: dongwonjo/FastKV, ``baselines/fastkv/
utils.py`` (FastKVCluster.update_kv) and ``eval/run_longbench.py``; docs/peers.md lists where we differ.
"""

from __future__ import annotations

from spts.config import Budget, SPTSConfig
from spts.methods.peers.base import check_keep, check_layer, format_keep, scaled_layer

# FastKV's defaults: --tsp_idx 15 for LLaMA-3.1-8B's 32 layers, --window_size 8, --kernel_size 7, --pooling maxpool
# (eval/run_longbench.py); keep 20% of the prompt (scripts/eval_*.sh: eviction_mode=proportional, tsp_rate=0.2).
PAPER_LAYER, PAPER_LAYERS, PAPER_KEEP, PAPER_WINDOW, PAPER_KERNEL = 15, 32, 0.2, 8, 7


def fastkv_config(
    num_layers: int,
    keep: Budget | None = None,
    tsp_layer: int | None = None,
    window: int = PAPER_WINDOW,
    kernel: int = PAPER_KERNEL,
) -> SPTSConfig:
    """The SPTS schedule of FastKV's TSP for a model of ``num_layers`` layers: ``keep`` tokens (int) or a fraction
    of the prompt (float) propagate past ``tsp_layer``; by default the paper's 20% past layer 15 of 32 (scaled)."""
    keep = check_keep("fastkv keep", PAPER_KEEP if keep is None else keep)
    layer = scaled_layer(PAPER_LAYER, PAPER_LAYERS, num_layers) if tsp_layer is None else tsp_layer
    # SPTS starts at layer 1 at the earliest, and some layer must follow the TSP layer.
    check_layer("fastkv TSP layer", layer, 1, num_layers - 2, num_layers)
    return SPTSConfig(
        start_layer=layer,
        stage_boundaries=(layer + 1,),
        budgets=(1.0, keep),
        delta=0,
        probe_tokens=window,
        pool_kernel=kernel,
        recent_tokens=window,
        skip_attention=False,
        skip_ffn=False,
        prune=True,
        name=f"fastkv@{format_keep(keep)}:L{layer}",
    )
