"""LTP: calibration, proxy files and their checks, and the proxy-driven FFN policy."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import spts
from conftest import tiny_model
from spts import SPTSConfig
from spts.calibration import ProxyFileError, calibrate, fidelity_report, load_proxies, save_proxies
from spts.calibration.calibrate import default_sizes

SMALL = SPTSConfig(start_layer=1, stage_boundaries=(3, 5), budgets=(24, 12, 6), delta=3)
UNLIMITED = SMALL.with_(budgets=(4096, 4096, 4096))


def _calibration_ids(model, n=512, seed=0):
    return torch.randint(0, model.config.vocab_size, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def llama_and_proxies():
    model = tiny_model("llama")
    with torch.no_grad():
        proxies = calibrate(model, _calibration_ids(model), d_low=32, rank=8, tokens=512, seq_len=128, progress=False)
    return model, proxies


def test_default_sizes_follow_the_paper():
    class Shape:
        def __init__(self, intermediate, hidden):
            self.intermediate_size, self.hidden_size = intermediate, hidden

    assert default_sizes(Shape(14336, 4096)) == (512, 192)
    assert default_sizes(Shape(18944, 3584)) == (1024, 256)
    assert default_sizes(Shape(1536, 576)) == (64, 32)


def test_proxy_cost_on_llama_8b_shape_is_under_two_percent():
    from spts.policies.ltp import LayerProxy

    hidden, d_low, rank = 4096, 512, 192
    proxy = LayerProxy(
        channels=torch.arange(d_low),
        gate_u=torch.zeros(hidden, rank),
        gate_v=torch.zeros(rank, d_low),
        up_u=torch.zeros(hidden, rank),
        up_v=torch.zeros(rank, d_low),
        down=torch.zeros(hidden, d_low),
    )
    ffn_flops = 2 * 3 * hidden * 14336
    assert proxy.flops_per_token("gate_up_down_norm") / ffn_flops < 0.02
    assert proxy.flops_per_token("gate_up_down") / ffn_flops > 0.02  # why the projected variant is not default


def test_calibration_file_round_trips(tmp_path, llama_and_proxies):
    model, proxies = llama_and_proxies
    assert sorted(proxies.layers) == list(range(6))
    assert proxies.meta.d_low == 32 and proxies.meta.rank == 8 and proxies.meta.tokens == 512
    path = save_proxies(proxies, tmp_path / "p.safetensors")
    loaded = load_proxies(path)
    assert loaded.meta == proxies.meta
    for idx, layer in proxies.layers.items():
        for name in ("channels", "gate_u", "gate_v", "up_u", "up_v", "down"):
            assert torch.equal(getattr(loaded.layers[idx], name), getattr(layer, name))
    loaded.check_model(model)


def test_low_rank_factors_reproduce_kept_channels_at_full_rank():
    model = tiny_model("qwen3")
    with torch.no_grad():
        proxies = calibrate(model, _calibration_ids(model), d_low=16, rank=16, tokens=256, seq_len=128, progress=False)
        mlp = model.model.layers[2].mlp
        proxy = proxies.layers[2]
        x = torch.randn(5, model.config.hidden_size)
        exact = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
        low = mlp.act_fn(x @ proxy.gate_u @ proxy.gate_v) * (x @ proxy.up_u @ proxy.up_v)
    torch.testing.assert_close(low, exact[:, proxy.channels], rtol=1e-4, atol=1e-5)


def test_all_tokens_active_with_proxies_equals_unmodified_model(llama_and_proxies):
    model, proxies = llama_and_proxies
    ids = torch.randint(0, model.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = model(ids).logits
        with spts.enabled(model, UNLIMITED, proxies=proxies):
            torch.testing.assert_close(model(ids).logits, reference, rtol=0, atol=1e-5)


def test_ltp_chooses_ffn_tokens_apart_from_attention(llama_and_proxies, tmp_path):
    model, proxies = llama_and_proxies
    path = save_proxies(proxies, tmp_path / "p.safetensors")
    ids = torch.randint(0, model.config.vocab_size, (1, 48), generator=torch.Generator().manual_seed(4))
    ffn_rows: dict[int, torch.Tensor] = {}
    handles = [
        model.model.layers[i].mlp.register_forward_pre_hook(lambda m, a, i=i: ffn_rows.__setitem__(i, a[0]))
        for i in range(6)
    ]
    with torch.no_grad(), spts.enabled(model, SMALL, proxies=path):
        model(ids)
        stats = spts.last_stats(model)
    for handle in handles:
        handle.remove()
    assert [layer.ffn_active for layer in stats.layers] == [48, 24, 24, 12, 12, 6]
    assert all(ffn_rows[i].shape[1] == stats.layers[i].ffn_active for i in range(6))


def test_proxies_for_another_model_are_refused(llama_and_proxies, tmp_path):
    _, proxies = llama_and_proxies
    other = tiny_model("llama", seed=1)  # same shape, different weights
    with pytest.raises(ProxyFileError, match="built for another model: fingerprint"):
        spts.enable(other, SMALL, proxies=proxies)
    qwen = tiny_model("qwen2")
    with pytest.raises(ProxyFileError, match="model_type is 'llama' in the proxies but 'qwen2'"):
        spts.enable(qwen, SMALL, proxies=save_proxies(proxies, tmp_path / "p.safetensors"))
    assert not spts.is_enabled(other) and not spts.is_enabled(qwen)


def test_bad_proxy_files_get_clear_errors(llama_and_proxies, tmp_path):
    model, proxies = llama_and_proxies
    with pytest.raises(ProxyFileError, match="does not exist; create it with `spts calibrate"):
        spts.enable(model, SMALL, proxies=tmp_path / "missing.safetensors")

    good = save_proxies(proxies, tmp_path / "good.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(ProxyFileError, match="truncated or corrupted"):
        load_proxies(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ProxyFileError, match="truncated or corrupted"):
        load_proxies(garbage)

    with safe_open(str(tmp_path / "good.safetensors"), "pt") as handle:
        metadata = handle.metadata() | {"format_version": "99"}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    newer = tmp_path / "newer.safetensors"
    save_file(tensors, str(newer), metadata=metadata)
    with pytest.raises(ProxyFileError, match="format 99, newer than this spts reads"):
        load_proxies(newer)


def test_proxies_missing_a_skipping_layer(llama_and_proxies):
    model, proxies = llama_and_proxies
    partial = type(proxies)(layers={i: p for i, p in proxies.layers.items() if i != 4}, meta=proxies.meta)
    with pytest.raises(ProxyFileError, match=r"lack layers \[4\]"):
        spts.enable(model, SMALL, proxies=partial)


def test_fidelity_report_covers_every_predictor(llama_and_proxies):
    model, proxies = llama_and_proxies
    with torch.no_grad():
        report = fidelity_report(model, proxies, _calibration_ids(model, 128, seed=9)[None])
    assert set(report.predictors) == {"gate_up", "gate_up_down_norm", "gate_up_down", "attention", "random"}
    assert set(report.spearman["gate_up"]) == set(range(6))
    assert all(-1 <= v <= 1 for values in report.spearman.values() for v in values.values())
    assert report.to_dict()["proxy_cost_share"]["gate_up"] < report.to_dict()["proxy_cost_share"]["gate_up_down"]
