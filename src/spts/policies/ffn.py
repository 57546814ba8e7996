"""FFN skipping policies: which candidates run the FFN in a skipping layer.

A scorer turns the attention probe's scores (and, if it wants them, the FFN inputs) into FFN
scores; the runtime keeps the top-M. LTP's low-rank proxy (``S_FFN = ||f(x)|| * S_MHA``) is one
such scorer; until proxies are given, the attention score alone decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class FFNScorer(Protocol):
    """Scores candidates for the FFN of one layer.

    ``needs_inputs``: whether ``score`` reads the normed FFN inputs; when False the runtime does
    not compute them for tokens that will not run the FFN.
    ``reuses_attention_selection``: True when the scores rank tokens exactly as the attention
    probe does, so the runtime can reuse the attention's top-M instead of selecting again.
    """

    needs_inputs: bool
    reuses_attention_selection: bool

    def score(self, layer_idx: int, ffn_inputs: torch.Tensor | None, attention_scores: torch.Tensor) -> torch.Tensor:
        """(B, C) scores for the C candidates; higher runs the FFN."""
        ...


@dataclass(frozen=True)
class AttentionScoreFFN:
    """The FFN follows attention: tokens the last token attends to most get their FFN update."""

    needs_inputs: bool = False
    reuses_attention_selection: bool = True

    def score(self, layer_idx: int, ffn_inputs: torch.Tensor | None, attention_scores: torch.Tensor) -> torch.Tensor:
        return attention_scores
