"""Fast decoding over a prefill's cache: static per-layer buffers, one CUDA graph per step.

transformers' decode step is bound by overhead, not by memory: per token it builds a mask, grows
every layer's DynamicCache by concatenation (a copy of the whole cache) and launches hundreds of
small kernels from Python. :class:`StaticDecoder` copies a prefill's cache once into buffers sized
to what each layer holds plus the tokens to come (an SPTS cache keeps fewer tokens in deep layers,
so each layer gets its own size), writes each new key/value in place, and on CUDA replays the
whole step as one captured graph. The same decoder serves the full model's cache, so SPTS and the
full model are compared on the same fast path.

Only the step runs here; the layers' weights and parts come from the model through its adapter,
so greedy tokens match the model's own decoding (tested against it).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import DynamicCache

from spts.adapters import DecoderAdapter, adapter_for
from spts.errors import UnsupportedInputError, UnsupportedModelError
from spts.runtime.padding import PaddedLayout, full_layout, generation_position_ids, layout_of

# RoPE variants whose frequencies depend on how long the sequence has grown: the decoder reads
# a table computed once per load, which would not follow them.
_SEQUENCE_DEPENDENT_ROPE = ("dynamic", "longrope")
_CHUNK = 256


class StaticDecoder:
    """Decode up to ``max_new_tokens`` tokens per load over static per-layer KV buffers.

    Build it once for a model and a cache shape, then :meth:`load` each prefill's cache and call
    :meth:`step` per token. Buffers (and the CUDA graph) are reused by later loads whose layers hold
    no more tokens than the first one's, so benchmarks and servers pay the capture once.

    Args:
        model: a supported transformers causal LM (SPTS enabled or not: the step does not go through
            the layers' forwards, so the patches do not matter).
        cache: a prefill's ``DynamicCache`` (full or SPTS-compressed); its per-layer sizes set the
            buffers' capacity, and it is loaded.
        max_new_tokens: how many tokens :meth:`step` may append after each load.
        cuda_graph: capture the step as a CUDA graph; None means yes on CUDA, no elsewhere.
        static_shapes: attend over whole buffers with a mask (the form a graph needs) even without
            a graph; by default eager steps attend over exactly the filled part.
        attention_mask: the (B, T) padding mask of a left-padded prompt whose cache holds every position (the
            unmodified model's, prefilled with generate's position ids). Not needed for SPTS's caches or
            :func:`spts.generation.prefill_with_cache`'s, which carry their padding layout.

    A left-padded batch decodes each row at its own position, with its padded cache slots masked in every layer.
    """

    def __init__(
        self,
        model: nn.Module,
        cache: Any,
        max_new_tokens: int,
        cuda_graph: bool | None = None,
        static_shapes: bool = False,
        attention_mask: torch.Tensor | None = None,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        self.model = model
        self.adapter: DecoderAdapter = adapter_for(model)
        self._check_model()
        lengths = _cache_lengths(cache, len(self.adapter.layers()))
        first = cache.layers[0].keys
        self.device, self.dtype = first.device, first.dtype
        if cuda_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a cache on a CUDA device; this one is on {self.device}")
        self.cuda_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        self.static_shapes = static_shapes or self.cuda_graph
        if self.static_shapes:
            _has_float32_out(self.device, self.dtype)  # probe (and cache) now, never during a graph capture
        self.max_new_tokens = max_new_tokens
        self.batch_size = first.shape[0]
        # Rounded up to whole chunks, the unit of the split reduction in _attend_static.
        self.capacity = [-(-(n + max_new_tokens) // _CHUNK) * _CHUNK for n in lengths]
        self.keys = [_buffer(layer.keys, c) for layer, c in zip(cache.layers, self.capacity, strict=True)]
        self.values = [_buffer(layer.values, c) for layer, c in zip(cache.layers, self.capacity, strict=True)]
        # Which slots each row may attend to: all but a padded prompt's empty or padding slots.
        self._visible = [torch.ones(self.batch_size, c, dtype=torch.bool, device=self.device) for c in self.capacity]
        self._padded = False
        # Step state lives in tensors so that a captured graph reads fresh values on every replay.
        self._prefix = torch.zeros(len(lengths), dtype=torch.long, device=self.device)
        self._step = torch.zeros((), dtype=torch.long, device=self.device)
        self._token = torch.zeros(self.batch_size, 1, dtype=torch.long, device=self.device)
        self._cos: torch.Tensor | None = None
        self._sin: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._host_prefix: list[int] = []
        self._host_step = 0
        self.load(cache, attention_mask=attention_mask)

    # ---------------------------------------------------------------- setup
    def _check_model(self) -> None:
        adapter = self.adapter
        windowed = [i for i in range(len(adapter.layers())) if adapter.sliding_window(i)]
        if windowed:
            raise UnsupportedModelError(
                f"fast decoding does not support sliding-window attention (layers {windowed[0]}..{windowed[-1]}); "
                "decode with the model itself (greedy_continue(..., fast=False) or model.generate)"
            )
        rope_type = str(getattr(adapter.rotary(), "rope_type", "default"))
        if any(kind in rope_type for kind in _SEQUENCE_DEPENDENT_ROPE):
            raise UnsupportedModelError(
                f"fast decoding does not support rope_type={rope_type!r}, whose frequencies change as the sequence "
                "grows; decode with the model itself (greedy_continue(..., fast=False) or model.generate)"
            )

    def load(self, cache: Any, position: int | None = None, attention_mask: torch.Tensor | None = None) -> None:
        """Copy a prefill's cache into the buffers and restart the step count.

        ``position`` is the position of the first new token; by default the number of tokens in
        layer 0, which holds the whole prompt (SPTS never skips layer 0), or for a padded batch each
        row's own (see the class's ``attention_mask``).
        """
        lengths = _cache_lengths(cache, len(self.capacity))
        fits = all(n + self.max_new_tokens <= c for n, c in zip(lengths, self.capacity, strict=True))
        if not fits or cache.layers[0].keys.shape[0] != self.batch_size:
            raise UnsupportedInputError(
                "this cache does not fit the decoder's buffers (a layer holds more tokens than the buffers leave room "
                "for, or the batch size differs); build a new StaticDecoder for it"
            )
        layout = _padded_layout(cache, attention_mask, lengths)
        with torch.inference_mode():
            for i, layer in enumerate(cache.layers):
                n = lengths[i]
                self.keys[i][:, :, :n].copy_(layer.keys)
                self.values[i][:, :, :n].copy_(layer.values)
                self._visible[i].fill_(True)
                if layout is not None:
                    # Padding slots are masked; zeroed too, so that whatever the prefill left there (a padding
                    # token's state) cannot reach the output as 0 * inf. Tokens appended since the prefill
                    # follow the prompt's slots and are all real.
                    slots = layout.slots(i).to(self.device)
                    width = slots.shape[1]
                    self._visible[i][:, :width].copy_(slots)
                    self.keys[i][:, :, :width].masked_fill_(~slots[:, None, :, None], 0)
                    self.values[i][:, :, :width].masked_fill_(~slots[:, None, :, None], 0)
            self._prefix.copy_(torch.tensor(lengths))
            self._step.zero_()
            if position is not None:
                start = torch.full((self.batch_size,), position, device=self.device)
            elif layout is not None:
                appended = lengths[0] - layout.attention_mask.shape[1]  # tokens decoded since the prefill
                start = layout.next_positions.to(self.device) + appended
            else:
                start = torch.full((self.batch_size,), lengths[0], device=self.device)
            positions = start[:, None] + torch.arange(self.max_new_tokens, device=self.device)[None]
            cos, sin = self.adapter.rotary()(self.keys[0], positions)
            if self._cos is None:
                self._cos, self._sin = cos.to(self.dtype), sin.to(self.dtype)
            else:
                self._cos.copy_(cos)
                self._sin.copy_(sin)
        self._host_prefix = lengths
        self._host_step = 0
        self._padded = layout is not None

    @property
    def remaining(self) -> int:
        """Tokens that :meth:`step` may still append before the next :meth:`load`."""
        return self.max_new_tokens - self._host_step

    # ---------------------------------------------------------------- stepping
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append ``tokens`` (B, 1) to every layer's cache; return their next-token logits (B, vocab)."""
        if self._host_step >= self.max_new_tokens:
            raise UnsupportedInputError(
                f"the decoder's buffers hold {self.max_new_tokens} new tokens and are full; load a new cache, or "
                "build the decoder with a larger max_new_tokens"
            )
        if tokens.shape != (self.batch_size, 1):
            raise UnsupportedInputError(
                f"step takes one token per sequence, shape ({self.batch_size}, 1); got {tuple(tokens.shape)}"
            )
        with torch.inference_mode():
            self._token.copy_(tokens)
            if self.cuda_graph and self._graph is None:
                self._capture()
            if self._graph is not None:
                self._graph.replay()
            else:
                self._run_step()
        self._host_step += 1
        return self._logits.clone()  # the buffer is overwritten by the next step

    def _run_step(self) -> None:
        adapter, model = self.adapter, self.model
        hidden = model.get_input_embeddings()(self._token)
        cos = self._cos.index_select(1, self._step.view(1))
        sin = self._sin.index_select(1, self._step.view(1))
        for i, layer in enumerate(adapter.layers()):
            normed = adapter.input_norm(layer, hidden)
            queries = adapter.queries(layer, normed, cos, sin)
            write_at = (self._prefix[i] + self._step).view(1)
            self.keys[i].index_copy_(2, write_at, adapter.keys(layer, normed, cos, sin))
            self.values[i].index_copy_(2, write_at, adapter.values(layer, normed))
            attn = self._attend(i, queries, adapter.attention(layer).scaling)
            hidden = hidden + adapter.attention_output(layer, attn)
            hidden = hidden + adapter.ffn(layer, adapter.post_attention_norm(layer, hidden))
        logits = model.get_output_embeddings()(adapter.final_norm(hidden[:, -1]))
        if self._logits is None or self._logits.dtype != logits.dtype:
            self._logits = logits
        else:
            self._logits.copy_(logits)
        self._step.add_(1)

    def _attend(self, layer_idx: int, queries: torch.Tensor, scaling: float) -> torch.Tensor:
        """Attention of one new query per sequence over this layer's buffer; (B, 1, heads, d).

        Grouped-query heads are folded into the query axis: the heads sharing a KV head become
        that head's queries, so no key is repeated.
        """
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        batch, kv_heads, _, head_dim = keys.shape
        grouped = queries.reshape(batch, kv_heads, -1, head_dim)
        if self.static_shapes:
            out = self._attend_static(layer_idx, grouped, scaling)
        else:
            n = self._host_prefix[layer_idx] + self._host_step + 1
            mask = self._visible[layer_idx][:, None, None, :n] if self._padded else None
            out = F.scaled_dot_product_attention(grouped, keys[:, :, :n], values[:, :, :n], mask, scale=scaling)
        return out.reshape(batch, -1, 1, head_dim).transpose(1, 2)

    def _attend_static(self, layer_idx: int, grouped: torch.Tensor, scaling: float) -> torch.Tensor:
        """Attention over the whole buffer, unfilled slots masked: fixed shapes, as a graph needs.

        Written as matmuls rather than SDPA: fused attention kernels parallelise over heads and
        queries, a handful of blocks for one decoded token, while the weighted sum of values here is
        split over chunks of the sequence (flash-decoding's split-K) so that long caches keep the
        whole device busy.
        """
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        batch, kv_heads, capacity, head_dim = keys.shape
        groups, chunks = grouped.shape[2], capacity // _CHUNK
        filled = self._prefix[layer_idx] + self._step
        visible = (torch.arange(capacity, device=keys.device) <= filled) & self._visible[layer_idx][:, None, None, :]
        scores = _scores_float32(grouped, keys) * scaling
        weights = scores.masked_fill(~visible, float("-inf")).softmax(-1).to(values.dtype)
        weights = weights.view(batch, kv_heads, groups, chunks, _CHUNK).transpose(2, 3)
        partial = torch.matmul(weights, values.view(batch, kv_heads, chunks, _CHUNK, head_dim))
        return partial.float().sum(2).to(values.dtype)

    def _capture(self) -> None:
        # Warm up on a side stream (as torch.cuda.graphs asks), then capture one step. Every run here
        # writes the slot of the current step, beyond the filled part, which the real step overwrites
        # before reading, so only the step count needs putting back.
        step = self._step.clone()
        try:
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._step.copy_(step)
                    self._run_step()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            self._step.copy_(step)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._run_step()
            self._graph = graph
        except RuntimeError as error:  # an op that cannot be captured: decode eagerly instead
            warnings.warn(
                f"CUDA graph capture of the decode step failed ({error}); decoding without a graph", stacklevel=3
            )
            self.cuda_graph = False
            self._graph = None
        finally:
            self._step.copy_(step)


def _scores_float32(grouped: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``grouped @ keys^T`` (B, kv_heads, groups, capacity) in float32, from float32 accumulators.

    Why: a bf16/fp16 matmul accumulates in float32 but rounds its output to the input dtype. Rounded
    scores of magnitude s are off by up to s * 2^-9 in bf16 (0.03 at s = 16), and softmax turns that
    into relative errors of the attention weights. On SmolLM2-135M (bf16, CPU, 2K-4K essay prompts)
    that made this form's attention output 2.3-2.4x further from float32 attention than SDPA's on
    average (SDPA's fused kernels keep scores in float32), and 1.4x with float32 scores
    (docs/decode.md). On CUDA, ``out_dtype=float32`` has cuBLAS write its float32 accumulators as
    they are: keys are still read once, in their own dtype, and no larger copy is made. Elsewhere
    (CPU, or a torch without ``out_dtype``) both operands are upcast: a float32 copy of the keys per
    step, which the CPU pays only when asked for this form (``static_shapes=True``).
    """
    if keys.dtype == torch.float32:
        return torch.matmul(grouped, keys.transpose(2, 3))
    if _has_float32_out(keys.device, keys.dtype):
        batch, kv_heads, capacity, head_dim = keys.shape
        scores = torch.bmm(
            grouped.reshape(batch * kv_heads, -1, head_dim),
            keys.view(batch * kv_heads, capacity, head_dim).transpose(1, 2),
            out_dtype=torch.float32,
        )
        return scores.view(batch, kv_heads, -1, capacity)
    return torch.matmul(grouped.float(), keys.transpose(2, 3).float())


@functools.cache
def _has_float32_out(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch.bmm(..., out_dtype=torch.float32)`` runs on this device for ``dtype`` inputs.

    Probed once per device and dtype, by the decoder's constructor: never during a graph capture.
    """
    if device.type != "cuda":
        return False  # CPU kernels have no out_dtype variant (torch 2.13)
    try:
        ones = torch.ones(1, 2, 2, dtype=dtype, device=device)
        return torch.bmm(ones, ones.transpose(1, 2), out_dtype=torch.float32).dtype == torch.float32
    except (RuntimeError, TypeError):  # no such overload or no kernel for it
        return False


def _cache_lengths(cache: Any, num_layers: int) -> list[int]:
    layers = getattr(cache, "layers", None)
    if not isinstance(cache, DynamicCache) or not layers or any(getattr(la, "keys", None) is None for la in layers):
        raise UnsupportedInputError(
            f"fast decoding starts from a filled DynamicCache (a prefill's cache); got {type(cache).__name__}"
        )
    if len(cache.layers) != num_layers:
        raise UnsupportedInputError(
            f"the cache has {len(cache.layers)} layers but the model has {num_layers}; it was built by another model"
        )
    return [layer.keys.shape[2] for layer in cache.layers]


def _padded_layout(cache: Any, attention_mask: torch.Tensor | None, lengths: list[int]) -> PaddedLayout | None:
    """The padding layout of ``cache``: its own (SPTS's prefill, prefill_with_cache), or a full cache's from the
    prompt's ``attention_mask``; None for unpadded prompts."""
    layout = layout_of(cache)
    if layout is None and attention_mask is not None and not bool(attention_mask.bool().all()):
        if any(n != attention_mask.shape[1] for n in lengths):
            raise UnsupportedInputError(
                f"attention_mask covers {attention_mask.shape[1]} tokens but the cache's layers hold {lengths}: pass "
                "the mask only for a full model's cache of that prompt (SPTS's caches carry their own layout)"
            )
        layout = full_layout(attention_mask, generation_position_ids(attention_mask))
    return layout


def _buffer(like: torch.Tensor, capacity: int) -> torch.Tensor:
    """Zeros shaped like a cache layer's keys or values (B, heads, n, d) but holding ``capacity`` tokens."""
    batch, heads, _, head_dim = like.shape
    return like.new_zeros(batch, heads, capacity, head_dim)
