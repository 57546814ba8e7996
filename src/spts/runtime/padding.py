"""Left-padded batches: which rows are real, and which cache slots decoding must hide.

A left-padded batch (``tokenizer(prompts, padding=True)`` with ``padding_side="left"``, the transformers
convention for generation) puts row ``b``'s ``L_b`` real tokens at the end of a ``(B, T)`` tensor. After an SPTS
prefill each layer's cache holds, per row, the tokens that row kept, left-padded to the longest row's count:
:class:`PaddedLayout` records which slots of each layer are real, so decoding (the model's own step through
the patched layers, or :class:`spts.StaticDecoder`) can mask the others. The layout travels with the cache it
describes (an attribute of the cache object), because a cache outlives the forward that made it and may be
decoded after SPTS was disabled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from spts.errors import UnsupportedInputError

_LAYOUT_ATTR = "_spts_padded_layout"


@dataclass(frozen=True)
class PaddedLayout:
    """Which prompt slots of each layer's cache hold a real token, per row.

    Attributes:
        attention_mask: (B, T) bool, the prompt's padding mask (True = real token).
        lengths: each row's real token count ``L_b``.
        slot_masks: layer index -> (B, N_layer) bool over that layer's prompt slots; layers not listed cache
            every prompt position and use ``attention_mask``.
        next_positions: (B,) position id of each row's first new token (``L_b`` under generate's convention,
            position ids counted from each row's first real token).
    """

    attention_mask: torch.Tensor
    lengths: tuple[int, ...]
    slot_masks: dict[int, torch.Tensor]
    next_positions: torch.Tensor

    def slots(self, layer_idx: int) -> torch.Tensor:
        """(B, N) bool: which prompt slots of layer ``layer_idx`` are real."""
        return self.slot_masks.get(layer_idx, self.attention_mask)


def left_padded_lengths(attention_mask: Any) -> tuple[int, ...] | None:
    """Each row's real token count for a left-padded 2D mask, or None when nothing is padded.

    One read of the mask (a host-device sync before the layers run, none inside them). Right padding and holes
    are refused: SPTS's last token is each row's last column, and a row's real tokens must be contiguous."""
    if not isinstance(attention_mask, torch.Tensor):
        return None
    mask = attention_mask.bool()
    width = mask.shape[-1]
    lengths = mask.sum(-1)
    # Left padding: the real tokens of a row of length L are exactly its last L columns.
    expected = torch.arange(width, device=mask.device)[None, :] >= (width - lengths)[:, None]
    facts = torch.stack((lengths, (mask == expected).all(-1).long()), dim=1).tolist()
    if all(n == width for n, _ in facts):
        return None
    wrong = [b for b, (_, left) in enumerate(facts) if not left]
    if wrong:
        raise UnsupportedInputError(
            f"SPTS supports left-padded batches only; rows {wrong} of the attention_mask are right-padded or have "
            "holes. Pad on the left (tokenizer.padding_side = 'left', the transformers convention for generation)."
        )
    empty = [b for b, (n, _) in enumerate(facts) if n == 0]
    if empty:
        raise UnsupportedInputError(f"rows {empty} of the batch are all padding; give every row at least one token")
    return tuple(n for n, _ in facts)


def next_positions(position_ids: Any, batch: int, width: int, device: torch.device) -> torch.Tensor:
    """(B,) position of each row's first new token: after its last prompt position id, or ``width`` when the
    forward was called without position ids (transformers then numbers every row 0..T-1)."""
    if isinstance(position_ids, torch.Tensor):
        return (position_ids[..., -1].reshape(-1).expand(batch) + 1).to(device)
    return torch.full((batch,), width, dtype=torch.long, device=device)


def generation_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a padded prompt as ``model.generate`` computes them: each row counts from its first real
    token, padding at 0."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


def full_layout(attention_mask: torch.Tensor, position_ids: Any = None) -> PaddedLayout:
    """The layout of a padded prefill's cache that holds every position in every layer (the unmodified model's)."""
    mask = attention_mask.bool()
    lengths = tuple(mask.sum(-1).tolist())
    positions = next_positions(position_ids, mask.shape[0], mask.shape[1], mask.device)
    return PaddedLayout(mask, lengths, {}, positions)


def left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (1, H, n_b, d) tensors into (B, H, N, d), each row's n_b slots at the end, zeros before them; and the
    (B, N) bool mask of the filled slots."""
    width = max(r.shape[2] for r in rows)
    first = rows[0]
    out = first.new_zeros(len(rows), first.shape[1], width, first.shape[3])
    filled = torch.zeros(len(rows), width, dtype=torch.bool, device=first.device)
    for b, row in enumerate(rows):
        n = row.shape[2]
        out[b, :, width - n :] = row[0]
        filled[b, width - n :] = True
    return out, filled


def attach_layout(cache: Any, layout: PaddedLayout) -> None:
    setattr(cache, _LAYOUT_ATTR, layout)


def layout_of(cache: Any) -> PaddedLayout | None:
    """The layout of a padded prefill's cache, or None for a cache of unpadded prompts."""
    return getattr(cache, _LAYOUT_ATTR, None)


def decode_mask(
    layout: PaddedLayout, layer_idx: int, given: Any, cached: int, new: int, additive: torch.dtype | None
) -> torch.Tensor:
    """The attention mask of ``new`` tokens appended to layer ``layer_idx``'s cache, which holds ``cached`` tokens.

    transformers builds one mask for layer 0's length (the whole padded prompt); this layer holds its own
    prompt slots, so their columns come from the layout. The columns of tokens appended since the prefill are the
    trailing columns of ``given`` (transformers' mask: causal among the new tokens, any padding among them), or
    causal when no mask was given. The result is in ``given``'s form: bool (True = attend), or additive floats
    (0 / the dtype's minimum) for a float mask; with no mask, additive in dtype ``additive`` if given (eager
    attention adds its mask), else bool."""
    slots = layout.slots(layer_idx)
    batch, prompt = slots.shape
    appended = cached - prompt + new  # tokens after the prompt, this step's included
    if isinstance(given, torch.Tensor) and given.dim() == 4:
        tail = given[..., -appended:].expand(batch, -1, new, -1)
    else:
        query = torch.arange(new, device=slots.device)[:, None] + (appended - new)
        visible = torch.arange(appended, device=slots.device)[None, :] <= query
        tail = visible[None, None].expand(batch, 1, -1, -1)
        if additive is not None:
            tail = _additive(tail, additive)
    head = slots[:, None, None, :].expand(batch, 1, new, prompt)
    if tail.dtype != torch.bool:
        head = _additive(head, tail.dtype)
    return torch.cat((head, tail), dim=-1)


def _additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill(~visible, torch.finfo(dtype).min)
