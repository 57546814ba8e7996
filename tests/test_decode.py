"""The static decoder gives the same greedy tokens as the model's own decoding, over full and SPTS caches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache

import spts
from conftest import ATTENTION, FAMILIES, tiny_model
from spts.generation import decode_step, greedy_continue, greedy_tokens, prefill_with_cache
from spts.runtime.decode import StaticDecoder

CONFIG = spts.SPTSConfig(start_layer=2, stage_boundaries=(4,), budgets=(0.5, 0.25), delta=0.05)
NEW_TOKENS = 24


def _decode(step, logits: torch.Tensor, n: int) -> torch.Tensor:
    tokens = []
    with torch.inference_mode():
        for _ in range(n):
            tokens.append(logits.argmax(-1, keepdim=True))
            logits = step(tokens[-1])
    return torch.cat(tokens, dim=1)


def _prompt(length: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attn", ATTENTION)
@pytest.mark.parametrize("family", FAMILIES)
def test_full_model_static_decoding_matches_transformers_generate(family, attn):
    model = tiny_model(family, attn)
    model.generation_config.eos_token_id = None  # no early stop: every row gets NEW_TOKENS tokens
    ids = _prompt(120)
    reference = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0
    )
    assert torch.equal(greedy_tokens(model, ids, NEW_TOKENS, fast=True), reference[:, ids.shape[1] :])


@pytest.mark.parametrize("static_shapes", [False, True], ids=["sliced", "masked"])
@pytest.mark.parametrize("family", FAMILIES)
def test_static_decoding_over_spts_cache_matches_model_decoding(family, static_shapes):
    # 250 prompt tokens + 24 new ones cross the 256-token chunk of the masked form's split reduction.
    model = tiny_model(family)
    ids = _prompt(250)
    with spts.enabled(model, CONFIG):
        logits, cache = prefill_with_cache(model, ids)
        assert len({cache.get_seq_length(i) for i in range(len(cache.layers))}) > 1  # really compressed
        decoder = StaticDecoder(model, cache, NEW_TOKENS, static_shapes=static_shapes)
        fast = _decode(decoder.step, logits, NEW_TOKENS - 1)
        slow = _decode(decode_step(model, cache, NEW_TOKENS, fast=False), logits, NEW_TOKENS - 1)
    assert torch.equal(fast, slow)
    assert decoder.remaining == 1


def test_a_decoder_reloads_later_caches_of_the_same_shape():
    model = tiny_model("llama")
    with spts.enabled(model, CONFIG):
        first_logits, first_cache = prefill_with_cache(model, _prompt(200, seed=1))
        decoder = StaticDecoder(model, first_cache, 16, static_shapes=True)
        _decode(decoder.step, first_logits, 16)
        assert decoder.remaining == 0
        logits, cache = prefill_with_cache(model, _prompt(200, seed=2))
        slow = _decode(decode_step(model, cache, 16, fast=False), logits, 16)
        logits, cache = prefill_with_cache(model, _prompt(200, seed=2))
        decoder.load(cache)
        assert torch.equal(_decode(decoder.step, logits, 16), slow)


def test_greedy_continue_fast_and_model_paths_give_the_same_text():
    class Tokenizer:  # a stand-in: token ids written out as text
        eos_token_id = 0

        def decode(self, tokens, skip_special_tokens=True):
            return " ".join(str(t) for t in tokens)

    model = tiny_model("qwen3")
    texts = []
    for fast in (False, True):
        with spts.enabled(model, CONFIG):
            logits, cache = prefill_with_cache(model, _prompt(150, batch=1))
            texts.append(greedy_continue(model, Tokenizer(), logits, cache, 20, stop_ids=frozenset(), fast=fast))
    assert texts[0] == texts[1] and len(texts[0].split()) == 20


def test_static_decoder_refusals():
    model = tiny_model("llama")
    logits, cache = prefill_with_cache(model, _prompt(64))
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        StaticDecoder(model, cache, 0)
    with pytest.raises(ValueError, match="cuda_graph=True needs a cache on a CUDA device"):
        StaticDecoder(model, cache, 4, cuda_graph=True)
    with pytest.raises(spts.UnsupportedInputError, match="starts from a filled DynamicCache"):
        StaticDecoder(model, DynamicCache(), 4)
    other = tiny_model("llama", num_hidden_layers=4)
    with pytest.raises(spts.UnsupportedInputError, match="the cache has 6 layers but the model has 4"):
        StaticDecoder(other, cache, 4)

    decoder = StaticDecoder(model, cache, 2)
    with pytest.raises(spts.UnsupportedInputError, match=r"one token per sequence, shape \(2, 1\)"):
        decoder.step(torch.zeros(2, 3, dtype=torch.long))
    token = logits.argmax(-1, keepdim=True)
    decoder.step(token)
    decoder.step(token)
    with pytest.raises(spts.UnsupportedInputError, match="buffers hold 2 new tokens and are full"):
        decoder.step(token)
    _, longer = prefill_with_cache(model, _prompt(400))
    with pytest.raises(spts.UnsupportedInputError, match="does not fit the decoder's buffers"):
        decoder.load(longer)

    windowed = tiny_model("qwen2", use_sliding_window=True, sliding_window=32, max_window_layers=0)
    _, cache = prefill_with_cache(windowed, _prompt(64))
    with pytest.raises(spts.UnsupportedModelError, match="does not support sliding-window attention"):
        StaticDecoder(windowed, cache, 4)

    dynamic = tiny_model("llama", rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    _, cache = prefill_with_cache(dynamic, _prompt(64))
    with pytest.raises(spts.UnsupportedModelError, match="does not support rope_type='dynamic'"):
        StaticDecoder(dynamic, cache, 4)


@pytest.mark.parametrize("seed", [0, 1])
def test_masked_attention_in_bfloat16_is_as_close_to_float32_as_sdpa(seed):
    # The masked form once rounded its QK^T scores to bf16 before the softmax: errors of up to
    # |score| * 2^-9 that the softmax turns into relative errors of the weights, where SDPA keeps
    # scores in float32. Trained models' heads have scores in the tens; these random ones do not, so
    # the queries are drawn at that scale (std 4 before the 1/sqrt(d) scaling). Measured (mean over
    # layers): bf16 scores 4.4x SDPA's error, float32 scores 1.3-1.5x (the rest is the bf16 softmax
    # weights and chunk sums). Logits are too blunt for this on a tiny model: its other bf16 ops
    # (weights, norms) move them as much as the scores do, either way round.
    model = tiny_model("llama", seed=seed).to(torch.bfloat16)
    _, cache = prefill_with_cache(model, _prompt(300, seed=seed))  # 301 keys span two 256-token chunks
    sliced = StaticDecoder(model, cache, 4)
    masked = StaticDecoder(model, cache, 4, static_shapes=True)
    generator = torch.Generator().manual_seed(seed)
    errors = {"sliced": [], "masked": []}
    for layer in range(model.config.num_hidden_layers):
        queries = (4 * torch.randn(2, 4, 1, 16, generator=generator)).to(torch.bfloat16)
        keys, values = (buffer[layer][:, :, :301].float() for buffer in (sliced.keys, sliced.values))
        grouped = queries.float().reshape(2, 2, 2, 16)  # 4 query heads share 2 KV heads
        exact = F.scaled_dot_product_attention(grouped, keys, values, scale=0.25)
        exact = exact.reshape(2, 4, 1, 16).transpose(1, 2)
        for name, decoder in (("sliced", sliced), ("masked", masked)):
            out = decoder._attend(layer, queries, 0.25).float()
            errors[name].append(float((out - exact).norm() / exact.norm()))
    sdpa, ours = (sum(errors[name]) / len(errors[name]) for name in ("sliced", "masked"))
    assert ours <= 2.5 * sdpa, f"masked form's relative error {ours:.2e} vs SDPA's {sdpa:.2e}"
