"""Proxy files that cannot be used: every one raises ProxyFileError naming the file and the command that rebuilds it.

Why: a proxy file is often a download or a cache entry, so it can be cut short or replaced by anything. The
loader used to trust the file's own sizes and died with a bare MemoryError or an OverflowError from deep
inside safetensors.
"""

from __future__ import annotations

import json
import random
import struct
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import spts
from conftest import tiny_model
from spts import SPTSConfig
from spts.calibration import (
    LTPProxies,
    ProxyFileError,
    ProxyMeta,
    calibrate,
    load_proxies,
    proxy_file,
    safetensors_header,
    save_proxies,
)
from spts.calibration.proxy_file import rebuild_command
from spts.policies.ltp import LayerProxy

SMALL = SPTSConfig(start_layer=1, stage_boundaries=(3, 5), budgets=(24, 12, 6), delta=3)


@pytest.fixture(scope="module")
def llama_and_proxies():
    model = tiny_model("llama")
    ids = torch.randint(0, model.config.vocab_size, (512,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        proxies = calibrate(model, ids, d_low=32, rank=8, tokens=512, seq_len=128, progress=False)
    return model, proxies


@pytest.fixture
def good(llama_and_proxies, tmp_path) -> Path:
    return save_proxies(llama_and_proxies[1], tmp_path / "good.safetensors")


def _assert_refused(path: Path, fragment: str) -> ProxyFileError:
    """load_proxies raises ProxyFileError that names ``path``, says ``fragment`` and gives the rebuild command."""
    with pytest.raises(ProxyFileError) as caught:
        load_proxies(path)
    message = str(caught.value)
    assert str(path) in message
    assert "spts calibrate --model" in message and f"--out {path}" in message
    assert fragment in message, message
    return caught.value


def _write_raw(path: Path, header: dict, data: bytes = b"", header_len: int | None = None) -> Path:
    """A file in safetensors layout with any header (the length prefix may lie)."""
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if header_len is None else header_len) + blob + data)
    return path


def _split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()  # noqa: SIM118


def test_valid_file_round_trips(llama_and_proxies, good):
    model, proxies = llama_and_proxies
    loaded = load_proxies(good)
    assert loaded.meta == proxies.meta and loaded.path == good
    assert sorted(loaded.layers) == sorted(proxies.layers)
    for idx, layer in proxies.layers.items():
        for name in ("channels", "gate_u", "gate_v", "up_u", "up_v", "down"):
            assert torch.equal(getattr(loaded.layers[idx], name), getattr(layer, name))
    loaded.check_model(model)


# ------------------------------------------------------------------------------------------------------------
# Files that are not readable safetensors
# ------------------------------------------------------------------------------------------------------------


def test_truncated_file(good):
    raw = good.read_bytes()
    good.write_bytes(raw[: len(raw) // 2])
    _assert_refused(good, "truncated or corrupted")
    _assert_refused(good, "cut short")


def test_random_bytes(tmp_path):
    path = tmp_path / "random.safetensors"
    path.write_bytes(random.Random(0).randbytes(4096))
    _assert_refused(path, "truncated or corrupted")


@pytest.mark.parametrize("size", [0, 3, 7])
def test_shorter_than_the_length_prefix(tmp_path, size):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01" * size)
    _assert_refused(path, "shorter than the 8-byte header length")


def test_header_length_larger_than_the_file(good):
    raw = good.read_bytes()
    good.write_bytes(struct.pack("<Q", len(raw)) + raw[8:])
    _assert_refused(good, f"declare a {len(raw)}-byte header but only {len(raw) - 8} bytes follow")


def test_absurd_header_length_within_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(safetensors_header, "MAX_HEADER_BYTES", 64)  # stands for 16 MiB, without a 16 MiB file
    path = _write_raw(tmp_path / "big.safetensors", {"x": "y" * 100})
    _assert_refused(path, "more than any proxy file needs")


@pytest.mark.parametrize(
    ("blob", "fragment"),
    [
        (b"not json at all!", "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (b"[1, 2, 3]", "not an object of tensors"),
        (b"[" * 5000 + b"]" * 5000, "not JSON"),  # nesting deep enough to blow the recursion limit
    ],
)
def test_header_that_is_not_a_json_object(tmp_path, blob, fragment):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(blob)) + blob)
    _assert_refused(path, fragment)


def test_tensor_offsets_beyond_the_file(tmp_path):
    header = {"layers.0.channels": {"dtype": "I64", "shape": [1000], "data_offsets": [0, 8000]}}
    path = _write_raw(tmp_path / "short.safetensors", header, b"\0" * 16)
    _assert_refused(path, "ends at byte 8000 of the data but the file holds only 16 data bytes")


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}, "unknown dtype 'Q4'"),
        ({"dtype": "F32", "shape": [2, -1], "data_offsets": [0, 8]}, "not a list of non-negative ints"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}, "needs 8 bytes but its data_offsets span -8"),
        ({"dtype": "F32", "shape": [10**30], "data_offsets": [0, 8]}, "data_offsets span 8"),
        ({"dtype": "F32", "shape": [2], "data_offsets": [0, True]}, "not two non-negative ints"),
        ({"dtype": "F32", "shape": [2]}, "exactly dtype, shape and data_offsets"),
    ],
)
def test_inconsistent_tensor_entries(tmp_path, entry, fragment):
    _assert_refused(_write_raw(tmp_path / "bad.safetensors", {"t": entry}, b"\0" * 8), fragment)


def test_overlapping_tensors_and_unexplained_bytes(tmp_path, good):
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    _assert_refused(_write_raw(tmp_path / "overlap.safetensors", {"a": entry, "b": entry}, b"\0" * 8), "overlap")
    good.write_bytes(good.read_bytes() + b"junk")
    _assert_refused(good, "the rest is unexplained")


def test_corrupt_files_never_reach_safetensors(tmp_path, good, monkeypatch):
    """The header is checked first: safetensors (which trusts the sizes) is never handed a bad file."""

    def refuse(*args, **kwargs):
        raise AssertionError("safetensors was called on a corrupt file")

    monkeypatch.setattr(proxy_file, "load_file", refuse)
    raw = good.read_bytes()
    (tmp_path / "half.safetensors").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "random.safetensors").write_bytes(random.Random(1).randbytes(len(raw)))
    for name in ("half", "random"):
        _assert_refused(tmp_path / f"{name}.safetensors", "truncated or corrupted")


def _big_proxy_file(path: Path) -> Path:
    """A valid proxy file of ~650 KB (larger tensors than the tiny model's), for the memory test."""
    hidden, d_low, rank, layers = 256, 128, 64, 2
    meta = ProxyMeta("llama", layers, hidden, 512, "0" * 16, d_low, rank, 0.2, "gate_up", "test", 0)
    proxies = {
        idx: LayerProxy(
            channels=torch.arange(d_low),
            gate_u=torch.randn(hidden, rank),
            gate_v=torch.randn(rank, d_low),
            up_u=torch.randn(hidden, rank),
            up_v=torch.randn(rank, d_low),
            down=torch.randn(hidden, d_low),
        )
        for idx in range(layers)
    }
    return save_proxies(LTPProxies(layers=proxies, meta=meta), path)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda raw: raw[: len(raw) // 2],  # a download cut short
        lambda raw: random.Random(2).randbytes(len(raw) // 2),  # random bytes: the length prefix is absurd
        lambda raw: struct.pack("<Q", len(raw) // 2 - 8) + random.Random(3).randbytes(len(raw) // 2 - 8),
    ],
    ids=["truncated", "random", "random-with-plausible-length"],
)
def test_corrupt_files_allocate_less_than_their_size(tmp_path, corrupt: Callable[[bytes], bytes]):
    raw = _big_proxy_file(tmp_path / "big.safetensors").read_bytes()
    assert load_proxies(tmp_path / "big.safetensors").meta.hidden_size == 256  # the uncorrupted file is fine
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(corrupt(raw))
    size = path.stat().st_size
    assert size > 200_000
    tracemalloc.start()
    try:
        with pytest.raises(ProxyFileError):
            load_proxies(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * size, f"loading a {size}-byte corrupt file peaked at {peak} bytes"


# ------------------------------------------------------------------------------------------------------------
# Readable safetensors that are not spts proxy files
# ------------------------------------------------------------------------------------------------------------


def test_safetensors_without_spts_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(4, 4)}, str(path))
    _assert_refused(path, "no spts metadata")


def _resave(good: Path, edit: Callable[[dict[str, torch.Tensor], dict[str, str]], None]) -> Path:
    tensors, metadata = _tensors_and_metadata(good)
    edit(tensors, metadata)
    save_file(tensors, str(good), metadata=metadata)
    return good


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda t, m: m.pop("fingerprint"), "no valid LTP proxy metadata: it lacks fingerprint"),
        (lambda t, m: m.update(colour='"blue"'), "has unknown colour"),
        (lambda t, m: m.update(num_layers='"six"'), "metadata 'num_layers' is 'six', not of type int"),
        (lambda t, m: m.update(rank="true"), "metadata 'rank' is True, not of type int"),
        (lambda t, m: m.update(fingerprint="abc"), "metadata 'fingerprint' is not JSON"),
        (lambda t, m: m.update(d_low="0"), "impossible sizes in its metadata (d_low)"),
        (lambda t, m: m.update(variant='"magic"'), "unknown LTP variant 'magic'"),
        (lambda t, m: t.update(extra=torch.zeros(2)), "unexpected tensor 'extra'"),
        (lambda t, m: t.pop("layers.3.down"), "lacks tensor 'layers.3.down' of layer 3"),
        (lambda t, m: t.update({"layers.0.down": t["layers.0.down"].T.contiguous()}), "calls for [64, 32]"),
        (lambda t, m: t.update({"layers.0.channels": t["layers.0.channels"].double()}), "has dtype F64"),
        (lambda t, m: t.update({"layers.2.channels": t["layers.2.channels"] + 1000}), "outside the FFN's 112"),
        (lambda t, m: t.update({"layers.9.channels": t.pop("layers.5.channels")}), "metadata says 6 layers"),
        (lambda t, m: [t.pop(k) for k in list(t)], "holds no proxy tensors"),
    ],
    ids=[
        "missing-metadata",
        "unknown-metadata",
        "metadata-type",
        "bool-is-no-int",
        "metadata-not-json",
        "impossible-size",
        "unknown-variant",
        "unexpected-key",
        "missing-tensor",
        "wrong-shape",
        "wrong-dtype",
        "channels-out-of-range",
        "layer-beyond-count",
        "no-tensors",
    ],
)
def test_wrong_keys_metadata_shapes_and_dtypes(good, edit, fragment):
    _assert_refused(_resave(good, edit), fragment)


def test_newer_format_names_path_and_command(good):
    _assert_refused(_resave(good, lambda t, m: m.update(format_version="99")), "format 99, newer than this spts")


# ------------------------------------------------------------------------------------------------------------
# Through spts.enable, and proxies built for another model
# ------------------------------------------------------------------------------------------------------------


def test_enable_with_a_truncated_file_raises_proxy_file_error(llama_and_proxies, good):
    model, _ = llama_and_proxies
    raw = good.read_bytes()
    good.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ProxyFileError, match="spts calibrate"):
        spts.enable(model, SMALL, proxies=good)
    assert not spts.is_enabled(model)


def test_another_model_names_the_file_and_the_command(llama_and_proxies, good):
    other = tiny_model("llama", seed=1)  # same shape, other weights
    with pytest.raises(ProxyFileError) as caught:
        spts.enable(other, SMALL, proxies=good)
    message = str(caught.value)
    assert f"the LTP proxies in {good} were built for another model: fingerprint" in message
    assert "spts calibrate --model <zoo name or model folder> --out <new proxy file>" in message
    fewer = tiny_model("llama", num_hidden_layers=4)  # another layer count
    with pytest.raises(ProxyFileError, match="num_layers is 6 in the proxies but 4 in this model"):
        load_proxies(good).check_model(fewer)


def test_rebuild_command_uses_the_zoo_name_of_a_cached_file(tmp_path):
    cached = tmp_path / "proxies" / "smollm2-135m-0123456789abcdef.safetensors"
    assert rebuild_command(cached) == f"spts calibrate --model smollm2-135m --out {cached}"
    spaced = tmp_path / "my proxies.safetensors"
    assert rebuild_command(spaced).endswith(f"--out '{spaced}'")  # quoted: it pastes into a shell as is
