"""Peer methods (GemFilter, FastKV's TSP, LazyLLM-style pruning): exact at unlimited budget against the unmodified
model for every family, the kept counts their specs say at a real budget, spec errors, and `spts eval` / `spts bench`
running them end to end on a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

import spts
from conftest import FAMILIES, family_module, tiny_model
from spts.adapters import adapter_for
from spts.eval import resolve_method, resolve_methods
from spts.generation import decode_step, greedy_tokens
from spts.methods.peers import GemFilter, fastkv_config, lazyllm_config

BASE = spts.SPTSConfig(start_layer=2, stage_boundaries=(4,), budgets=(0.5, 0.25), delta=0.05)
LENGTH, NEW_TOKENS = 64, 4


def _prompt(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 97, (1, LENGTH), generator=torch.Generator().manual_seed(seed))


def _unmodified(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-position logits and greedy tokens of the unmodified transformers model (its own forward and step)."""
    assert not spts.is_enabled(model)
    return model(ids).logits[:, -1], greedy_tokens(model, ids, NEW_TOKENS, fast=False)


def _peer(method, model, ids: torch.Tensor):
    """The method as the eval runner runs it: applied, prefilled, then decoded through the static decoder."""
    with method.applied(model):
        logits, cache = method.prefill(model, ids)
        first = logits
        stats = spts.last_stats(model) if method.config is not None else None
        step = decode_step(model, cache, NEW_TOKENS, fast=True)
        tokens = [logits.argmax(-1, keepdim=True)]
        for _ in range(NEW_TOKENS - 1):
            tokens.append(step(tokens[-1]).argmax(-1, keepdim=True))
    assert not spts.is_enabled(model)
    return first, torch.cat(tokens, dim=1), cache, stats


# ------------------------------------------------------------------------------------------------------------
# exact at unlimited budget
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["gemfilter@1.0", "gemfilter", "fastkv@1.0", "lazyllm@10"])
@pytest.mark.parametrize("family", FAMILIES)
def test_peer_is_the_unmodified_model_at_unlimited_budget(family, spec):
    model = tiny_model(family)
    ids = _prompt()
    expected_logits, expected_tokens = _unmodified(model, ids)
    logits, tokens, cache, _ = _peer(resolve_method(spec, BASE, model), model, ids)
    torch.testing.assert_close(logits, expected_logits)
    assert torch.equal(tokens, expected_tokens)
    assert all(cache.get_seq_length(i) >= LENGTH for i in range(len(cache.layers)))


# ------------------------------------------------------------------------------------------------------------
# GemFilter at a real budget
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("spec, kept", [("gemfilter@16:L3", 16), ("gemfilter@0.25", 16)])
def test_gemfilter_second_pass_reads_only_the_kept_tokens(family, spec, kept):
    model = tiny_model(family)
    ids = _prompt()
    method = resolve_method(spec, BASE, model)
    layer = method.peer.filter_layer
    adapter = adapter_for(model)
    inputs, calls = [], [0] * len(adapter.layers())
    handles = [adapter.decoder().register_forward_pre_hook(lambda m, a, k: inputs.append(k.get("input_ids").shape[-1]),
                                                            with_kwargs=True)]  # fmt: skip
    for i, block in enumerate(adapter.layers()):
        handles.append(block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1)))
    try:
        logits, tokens, cache, _ = _peer(method, model, ids)
    finally:
        for handle in handles:
            handle.remove()
    # Pass 1 stops at the filter layer (nothing from it on runs); pass 2 and each decode step read k tokens / 1.
    assert inputs[:2] == [LENGTH, kept]
    assert calls == [2 if i < layer else 1 for i in range(len(calls))]
    assert [cache.get_seq_length(i) for i in range(len(cache.layers))] == [kept] * len(cache.layers)
    assert method.kv_fraction(model, cache, LENGTH) == kept / LENGTH
    full_logits, _ = _unmodified(model, ids)
    assert not torch.allclose(logits, full_logits, atol=1e-3)
    # Decoding continues at position k: the model's own greedy tokens for the kept ids as a new prompt.
    selected = method.peer.select(model, ids)
    assert selected.shape == (1, kept) and selected[0, -1] == LENGTH - 1 and bool((selected.diff() > 0).all())
    _, expected = _unmodified(model, ids.gather(1, selected))
    assert torch.equal(tokens, expected)


def test_gemfilter_scores_as_the_reference_code():
    """GemFilter's standard_dis_index on the unmodified model's own layer input: the last query's raw logits
    against every key (each head its KV group), summed over heads, avg-pooled over 5, top-k in original order."""
    model = tiny_model("llama")
    ids, layer_idx, kept = _prompt(1), 3, 20
    hidden = model(ids, output_hidden_states=True).hidden_states[layer_idx]
    attention = model.model.layers[layer_idx].self_attn
    normed = model.model.layers[layer_idx].input_layernorm(hidden)

    def heads(x):
        return x.view(1, LENGTH, -1, 16).transpose(1, 2)

    cos, sin = model.model.rotary_emb(hidden, torch.arange(LENGTH)[None])
    q, k = family_module(model).apply_rotary_pos_emb(heads(attention.q_proj(normed)), heads(attention.k_proj(normed)),
                                                     cos, sin)  # fmt: skip
    k = family_module(model).repeat_kv(k, 2)
    scores = torch.matmul(q[:, :, -1:], k.transpose(-1, -2))[:, :, 0].sum(dim=1, keepdim=True)
    pooled = F.avg_pool1d(scores, kernel_size=5, padding=2, stride=1)[:, 0]
    pooled[:, -1] = float("inf")  # we always keep the last token (GemFilter's top-k nearly always does)
    expected = pooled.topk(kept).indices.sort().values
    assert torch.equal(GemFilter(kept, layer_idx).select(model, ids), expected)


# ------------------------------------------------------------------------------------------------------------
# FastKV and LazyLLM at a real budget: per-layer counts from the runtime's statistics
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_fastkv_propagates_the_kept_tokens_past_the_tsp_layer(family):
    model = tiny_model(family)
    ids = _prompt()
    method = resolve_method("fastkv@16:L2", BASE, model)
    logits, _, cache, stats = _peer(method, model, ids)
    # Layers 0..2 (TSP layer included) compute and cache every token; from layer 3 on only the 16 selected.
    assert [layer.candidates for layer in stats.layers] == [64, 64, 64, 16, 16, 16]
    assert [layer.attention_active for layer in stats.layers] == [64, 64, 64, 16, 16, 16]
    assert [layer.ffn_active for layer in stats.layers] == [64, 64, 64, 16, 16, 16]
    assert [cache.get_seq_length(i) for i in range(6)] == [64, 64, 64, 16, 16, 16]
    # FastKV's observation window (the last 8 tokens) always propagates.
    assert set(range(56, 64)) <= set(stats.candidates[3][0].tolist())
    full_logits, _ = _unmodified(model, ids)
    assert not torch.allclose(logits, full_logits, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_lazyllm_prunes_progressively(family):
    model = tiny_model(family)
    ids = _prompt()
    logits, _, cache, stats = _peer(resolve_method("lazyllm", BASE, model), model, ids)
    # Pruning layers 2, 3, 4 of 6 (a quarter, half, three quarters) keep 60%, 40%, 20% of 64 tokens (rounded up);
    # every token still in play is computed in full (no skipping inside a stage) and cached.
    counts = [64, 64, 39, 26, 13, 13]
    assert [layer.candidates for layer in stats.layers] == counts
    assert [layer.attention_active for layer in stats.layers] == counts
    assert [layer.ffn_active for layer in stats.layers] == counts
    assert [cache.get_seq_length(i) for i in range(6)] == counts
    full_logits, _ = _unmodified(model, ids)
    assert not torch.allclose(logits, full_logits, atol=1e-3)


def test_peer_schedules_are_the_documented_spts_configs():
    assert fastkv_config(32) == spts.SPTSConfig(
        start_layer=15, stage_boundaries=(16,), budgets=(1.0, 0.2), delta=0, probe_tokens=8, pool_kernel=7,
        recent_tokens=8, skip_attention=False, skip_ffn=False,
    )  # fmt: skip
    assert lazyllm_config(32) == spts.SPTSConfig(
        start_layer=7, stage_boundaries=(8, 16, 24), budgets=(1.0, 0.6, 0.4, 0.2), delta=0, skip_attention=False,
        skip_ffn=False,
    )  # fmt: skip
    assert lazyllm_config(32, 2.0).budgets == (1.0, 1.0, 0.8, 0.4)
    assert GemFilter.for_model(tiny_model("llama", num_hidden_layers=32)) == GemFilter(1024, 13)


# ------------------------------------------------------------------------------------------------------------
# specs
# ------------------------------------------------------------------------------------------------------------


def test_peer_specs_resolve_to_named_methods():
    model = tiny_model("llama")
    methods = {m.name: m for m in resolve_methods("full,gemfilter,gemfilter@0.10:L3,fastkv,fastkv@2048,lazyllm@0.5",
                                                  BASE, model)}  # fmt: skip
    assert list(methods) == ["full", "gemfilter", "gemfilter@0.1:L3", "fastkv", "fastkv@2048", "lazyllm@0.5"]
    assert methods["gemfilter"].peer == GemFilter(1024, 2) and methods["gemfilter"].config is None  # 13/32 of 6
    assert methods["gemfilter@0.1:L3"].peer == GemFilter(0.1, 3)
    assert methods["fastkv"].config.start_layer == 3 and methods["fastkv"].config.budgets == (1.0, 0.2)
    assert methods["fastkv@2048"].config.budgets == (1.0, 2048)
    assert methods["lazyllm@0.5"].config.budgets == (1.0, 0.3, 0.2, 0.1)
    assert resolve_method("gemfilter@1.0", BASE, model).name == "gemfilter@1.0"  # the whole prompt, not 1 token
    assert resolve_method("gemfilter@1", BASE, model).peer.keep == 1
    assert len({m.fingerprint for m in methods.values()}) == len(methods)
    assert methods["gemfilter"].fingerprint == resolve_method("gemfilter:L2", BASE, model).fingerprint


@pytest.mark.parametrize(
    "spec, message",
    [
        ("gemfilter@0", "token count >= 1"),
        ("gemfilter@-3", "token count >= 1"),
        ("fastkv@1.5", r"fraction of the prompt in \(0, 1\]"),
        ("gemfilter@many", "keep after '@'"),
        ("gemfilter:L6", "gemfilter filter layer 6 is out of range for this 6-layer model: use 0..5"),
        ("fastkv:L5", "fastkv TSP layer 5 is out of range for this 6-layer model: use 1..4"),
        ("fastkv:L0", "use 1..4"),
        ("gemfilter:13", "must be L<index>"),
        ("lazyllm:L3", "lazyllm takes no layer"),
        ("lazyllm@0", "positive number"),
        ("gemfilterx", "unknown method .* a peer: gemfilter"),
    ],
)
def test_peer_spec_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_methods(spec, BASE, tiny_model("llama"))


def test_peers_are_refused_where_they_cannot_apply():
    with pytest.raises(ValueError, match="needs the model"):
        resolve_methods("gemfilter", BASE)
    with pytest.raises(ValueError, match="needs at least 5 layers"):
        resolve_methods("lazyllm", BASE, tiny_model("llama", num_hidden_layers=4))
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97)).eval()
    for spec in ("gemfilter", "fastkv", "lazyllm"):
        with pytest.raises(spts.UnsupportedModelError, match="does not support model_type='gpt2'"):
            resolve_methods(spec, BASE, gpt2)
    windowed = tiny_model("qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=0)
    for spec in ("gemfilter", "fastkv", "lazyllm"):
        with pytest.raises(spts.UnsupportedModelError, match="sliding-window"):
            resolve_methods(spec, BASE, windowed)
    model = tiny_model("llama")
    method = resolve_method("gemfilter@8", BASE, model)
    with spts.enabled(model, BASE), pytest.raises(ValueError, match="disable SPTS"):
        method.prefill(model, _prompt())


# ------------------------------------------------------------------------------------------------------------
# spts eval and spts bench, end to end on a tiny model folder
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from test_zoo_haystack import _tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = _tiny_tokenizer(chat=True)
    tiny_model("llama", vocab_size=len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _cli(args: list[str]):
    from typer.testing import CliRunner

    from spts.cli import app

    return CliRunner().invoke(app, args)


def test_eval_cli_runs_peers(model_dir, tmp_path):
    methods = "full,gemfilter@0.5,fastkv@0.5,lazyllm"
    args = ["eval", "--model", str(model_dir), "--tasks", "niah_single", "--lengths", "300", "--samples", "1"]
    result = _cli([*args, "--methods", methods, "--device", "cpu", "--no-ltp", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r for r in map(json.loads, (tmp_path / "samples.jsonl").read_text().splitlines())}
    assert list(rows) == methods.split(",")
    assert rows["full"]["kv_fraction"] == 1.0
    assert rows["gemfilter@0.5"]["kv_fraction"] == pytest.approx(0.5, abs=0.01)
    assert 0 < rows["fastkv@0.5"]["kv_fraction"] < 1 and 0 < rows["lazyllm"]["kv_fraction"] < 1
    assert all(r["ttft_s"] > 0 for r in rows.values())
    assert "| gemfilter@0.5 |" in (tmp_path / "table.md").read_text()
    refused = _cli([*args, "--methods", "full,gemfilter:L9", "--out", str(tmp_path / "bad")])
    assert refused.exit_code != 0 and "out of range" in " ".join(refused.output.replace("│", " ").split())


def test_bench_cli_times_peers_beside_the_full_model(model_dir, tmp_path):
    args = ["bench", "--model", str(model_dir), "--lengths", "64", "--repeats", "1", "--warmup", "0", "--no-decode"]
    result = _cli([*args, "--methods", "full,gemfilter@0.5", "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [(r["length"], r["method"]) for r in rows] == [(64, "full"), (64, "gemfilter@0.5")]
    assert rows[1]["kv_fraction"] == 0.5 and rows[1]["kv_cache_bytes"] == rows[0]["kv_cache_bytes"] // 2
    assert "| 64 | gemfilter@0.5 |" in (tmp_path / "table.md").read_text()
    refused = _cli([*args, "--methods", "gemfilter@0.5", "--out", str(tmp_path / "bad")])
    assert refused.exit_code != 0 and "add full" in " ".join(refused.output.replace("│", " ").split())
