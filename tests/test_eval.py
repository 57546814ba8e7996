"""The evaluation harness: task generators, prompts, LongBench loading, methods, resumable runs, reports.

Generators run with a tiny word-level tokenizer (milliseconds per prompt); the run tests use a tiny random
model; the real SmolLM2 end-to-end run is marked slow.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections import Counter

import pytest

from conftest import tiny_model
from spts import SPTSConfig
from spts.config_file import ConfigFileError
from spts.eval import (
    TASKS,
    PromptRenderer,
    ResumeError,
    build_samples,
    generate,
    longbench_samples,
    resolve_methods,
    run_eval,
    summarize,
    write_reports,
)
from spts.eval import runner as runner_module
from spts.eval.report import markdown
from spts.tasks import insert_at_depths, resolve_tasks, sample_depth
from test_zoo_haystack import _tiny_tokenizer


@pytest.fixture(scope="module")
def renderer():
    return PromptRenderer(_tiny_tokenizer(chat=True))


# ------------------------------------------------------------------------------------------------------------
# generators
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(TASKS))
def test_generator_is_deterministic_and_fits_the_length(renderer, task):
    spec = TASKS[task]
    first = generate(spec, renderer, 2048, index=3, seed=7)
    again = generate(spec, renderer, 2048, index=3, seed=7)
    other = generate(spec, renderer, 2048, index=4, seed=7)
    assert first == again
    assert first.user != other.user
    n_tokens = renderer.count(first.user, first.answer_prefix)
    assert 0.75 * 2048 <= n_tokens <= 2048
    assert first.references and all(first.references)
    assert first.sample_id == f"{task}/2048/3"
    if task != "qa_hotpotqa":  # HotpotQA answers may be "yes"/"no", not spans of the text
        for reference in first.references:
            assert reference in first.user


@pytest.mark.parametrize("depth", [0.1, 0.5, 0.9])
def test_needle_at_requested_depth(renderer, depth):
    sample = generate(TASKS["niah_single"], renderer, 2048, index=0, depth=depth)
    needle = f"is: {sample.references[0]}."
    body = sample.user.split("\n", 1)[1].rsplit("\nWhat are all", 1)[0]  # between instruction and question
    assert sample.depth == depth
    assert body.index(needle) / len(body) == pytest.approx(depth, abs=0.05)


@pytest.mark.parametrize("depth", [0.2, 0.8])
def test_gold_document_at_requested_depth(renderer, depth):
    sample = generate(TASKS["qa_squad"], renderer, 3000, index=1, depth=depth)
    context = sample.user.split("\n\n", 1)[1].rsplit("\n\nNow, answer", 1)[0]
    positions = [context.find(answer) for answer in sample.references if answer in context]
    assert min(positions) / len(context) == pytest.approx(depth, abs=0.1)


def test_multi_needle_tasks(renderer):
    multikey = generate(TASKS["niah_multikey"], renderer, 2048, index=0)
    assert multikey.user.count("One of the special magic numbers for") == 4 and len(multikey.references) == 1
    multivalue = generate(TASKS["niah_multivalue"], renderer, 2048, index=0)
    key = re.search(r"for (\S+) mentioned", multivalue.user).group(1)
    assert multivalue.user.count(f"numbers for {key} is:") == 4 and len(multivalue.references) == 4
    assert multivalue.aggregate == "all"


def test_variable_chain_in_order(renderer):
    sample = generate(TASKS["vt"], renderer, 2048, index=2, depth=0.3)
    names = sample.references
    assert len(names) == 5
    positions = [sample.user.index(f"VAR {name} =") for name in names]
    assert positions == sorted(positions)
    value = re.search(r"assigned the value (\d+)", sample.user).group(1)
    assert f"VAR {names[0]} = {value}." in sample.user


def test_common_words_are_the_most_common(renderer):
    sample = generate(TASKS["cwe"], renderer, 4096, index=0)
    counts = Counter(re.findall(r"^\d+\. (\w+)$", sample.user, flags=re.M))
    assert {w: counts[w] for w in sample.references} == dict.fromkeys(sample.references, 30)
    assert max(c for w, c in counts.items() if w not in sample.references) == 3


def test_frequent_words_are_strictly_the_top_three(renderer):
    sample = generate(TASKS["fwe"], renderer, 2048, index=0)
    context = sample.user.split("coded words. ", 1)[1].rsplit("\nQuestion", 1)[0]
    ranked = Counter(w for w in context.split() if w != "....").most_common(4)
    assert tuple(w for w, _ in ranked[:3]) == sample.references
    assert ranked[2][1] > ranked[3][1]


def test_build_samples_interleaves_tasks_and_extends(renderer):
    samples = build_samples(renderer, "niah_single,vt", [1024], n=2)
    assert [s.sample_id for s in samples] == ["niah_single/1024/0", "vt/1024/0", "niah_single/1024/1", "vt/1024/1"]
    more = build_samples(renderer, "niah_single,vt", [1024], n=3)
    assert more[:4] == samples  # sample i never depends on how many are drawn


def test_task_groups_and_errors(renderer):
    assert [s.name for s in resolve_tasks("qa")] == ["qa_squad", "qa_hotpotqa"]
    assert len(resolve_tasks("all")) + len(resolve_tasks("lbf")) == len(TASKS)  # two families
    assert [s.name for s in resolve_tasks("all,lbf")] == list(TASKS)
    with pytest.raises(ValueError, match="unknown task 'niah'"):
        resolve_tasks("niah")
    with pytest.raises(ValueError, match="too small"):
        generate(TASKS["niah_single"], renderer, 40, index=0)
    with pytest.raises(ValueError, match="depth"):
        generate(TASKS["niah_single"], renderer, 1024, index=0, depth=1.5)
    with pytest.raises(ValueError, match="at least one sample"):
        build_samples(renderer, "vt", [1024], n=0)


def test_depth_helpers():
    assert insert_at_depths(["a", "b", "c", "d"], [(0.0, "X"), (1.0, "Y"), (0.5, "Z")]) == [
        "X", "a", "b", "Z", "c", "d", "Y",
    ]  # fmt: skip
    depths = [sample_depth(i) for i in range(20)]
    assert all(0 <= d < 1 for d in depths) and max(depths) - min(depths) > 0.9


# ------------------------------------------------------------------------------------------------------------
# prompts and LongBench
# ------------------------------------------------------------------------------------------------------------


def test_renderer_chat_modes_and_middle_truncation():
    chat_tok, plain_tok = _tiny_tokenizer(chat=True), _tiny_tokenizer(chat=False)
    text, special = PromptRenderer(chat_tok).text("hello", " answer")
    assert text.startswith("<|user|>") and text.endswith("<|assistant|>\n answer") and not special
    assert PromptRenderer(chat_tok, chat="off").text("hello") == ("hello", True)
    assert PromptRenderer(plain_tok).text("hello") == ("hello", True)
    with pytest.raises(ValueError, match="no chat template"):
        PromptRenderer(plain_tok, chat="on")
    words = " ".join(f"w{i}" for i in range(100))
    truncated = PromptRenderer(plain_tok, max_prompt_tokens=20).truncate_middle(
        "the old farmer " * 20 + "the village baker " * 20
    )
    assert truncated.startswith("the old farmer") and truncated.endswith("village baker")
    assert len(plain_tok(truncated, add_special_tokens=False)["input_ids"]) <= 20
    assert PromptRenderer(plain_tok, max_prompt_tokens=1000).truncate_middle(words) == words


def test_longbench_loader(tmp_path):
    records = [
        {"input": "Who?", "context": "Passage 1:\nAda wrote it.", "answers": ["Ada"], "length": 5, "all_classes": None},
        {"input": "Why?", "context": "Because.", "answers": ["Because"], "length": 2, "all_classes": None},
    ]
    (tmp_path / "hotpotqa.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    trec = {"input": "What is X?", "context": "Q: y? Type: Other", "answers": ["City"], "all_classes": ["City", "Food"]}
    (tmp_path / "trec.jsonl").write_text(json.dumps(trec))
    samples = longbench_samples(tmp_path, "hotpotqa")
    assert len(samples) == 2 and len(longbench_samples(tmp_path, "hotpotqa", limit=1)) == 1
    first = samples[0]
    assert first.user.startswith("Answer the question based on the given passages.")
    assert "Passage 1:\nAda wrote it." in first.user and first.user.endswith("Question: Who?\nAnswer:")
    assert (first.metric, first.max_new_tokens, first.use_chat_template) == ("qa_f1", 32, True)
    assert first.sample_id == "longbench/hotpotqa/native/0"
    (sample,) = longbench_samples(tmp_path, "trec")
    assert (sample.metric, sample.use_chat_template, sample.first_line_only) == ("classification", False, True)
    assert sample.all_classes == ("City", "Food")
    with pytest.raises(FileNotFoundError, match="--longbench-dir"):
        longbench_samples(tmp_path, "qasper")
    with pytest.raises(ValueError, match="unknown LongBench task"):
        longbench_samples(tmp_path, "squad")
    (tmp_path / "musique.jsonl").write_text(json.dumps({"question": "x"}))
    with pytest.raises(ValueError, match="not a LongBench record"):
        longbench_samples(tmp_path, "musique")


# ------------------------------------------------------------------------------------------------------------
# methods
# ------------------------------------------------------------------------------------------------------------

BASE = SPTSConfig(start_layer=2, stage_boundaries=(4,), budgets=(0.5, 0.25), delta=0.05, name="tiny")


def test_methods_resolve_ablations_and_budget_levels():
    methods = {m.name: m for m in resolve_methods("full,pap,pap+ffn,spts,spts@0.5,spts@2,ceiling", BASE)}
    assert methods["full"].config is None
    assert (methods["pap"].config.skip_ffn, methods["pap"].config.prune) == (False, False)
    assert (methods["pap+ffn"].config.skip_ffn, methods["pap+ffn"].config.prune) == (True, False)
    assert methods["spts"].config == BASE
    assert methods["spts@0.5"].config.budgets == (0.25, 0.125)
    assert methods["spts@2"].config.budgets == (1.0, 0.5)  # fractions capped at the whole prompt
    assert methods["ceiling"].selection == "random"
    assert len({m.fingerprint for m in methods.values()}) == len(methods)
    assert resolve_methods("spts", BASE.with_(name="renamed"))[0].fingerprint == methods["spts"].fingerprint


def test_derived_is_the_papers_schedule_at_the_models_depth():
    model = tiny_model("llama", num_hidden_layers=12)
    [method] = resolve_methods("derived", BASE, model)
    assert method.name == "derived" and method.config == SPTSConfig.for_model(model)
    with pytest.raises(ValueError, match="'derived' follows the model's depth"):
        resolve_methods("derived", BASE)


def test_selection_variants_resolve_on_top_of_a_budget_level():
    [method] = resolve_methods("spts@2+kvc+max+sinks4+recent16+acc+window8+local32", BASE)
    assert method.name == "spts@2+kvc+max+sinks4+recent16+acc+window8+local32"
    assert method.config == BASE.with_(
        budgets=(1.0, 0.5), kv_complete=True, head_aggregation="max", sink_tokens=4, recent_tokens=16,
        accumulate_scores=True, probe_tokens=8, local_window=32,
    )  # fmt: skip
    # A variant at its default changes nothing: the fingerprint of earlier runs stays valid.
    assert BASE.with_(kv_complete=False) == BASE
    assert resolve_methods("spts", BASE)[0].fingerprint != resolve_methods("spts+kvc", BASE)[0].fingerprint


def test_fields_added_to_the_config_keep_recorded_fingerprints():
    """The checked-in SmolLM2 run was recorded before SPTSConfig grew end_layer and the selection variants."""
    preset = SPTSConfig.preset("smollm2-135m")
    methods = resolve_methods("full,pap,pap+ffn,spts@0.5,spts,spts@2", preset)
    recorded = pathlib.Path(__file__).resolve().parents[1] / "benchmarks/results/eval_smollm2_4k/samples.jsonl"
    rows = map(json.loads, recorded.read_text().splitlines())
    assert {m.name: m.fingerprint for m in methods} == {row["method"]: row["method_fingerprint"] for row in rows}


def test_config_files_are_methods(tmp_path):
    tuned = BASE.with_(budgets=(0.7, 0.4), accumulate_scores=True, name="whatever")
    tuned.to_file(tmp_path / "tuned.json", model=tiny_model("llama"))
    spec = f"full,{tmp_path}/tuned.json,mine=file:{tmp_path}/tuned.json,spts"
    methods = {m.name: m for m in resolve_methods(spec, BASE, tiny_model("llama"))}
    assert list(methods) == ["full", "tuned", "mine", "spts"]
    assert methods["tuned"].config == tuned == methods["mine"].config
    assert methods["tuned"].fingerprint == methods["mine"].fingerprint != methods["spts"].fingerprint
    # A file made for another model (layer count) is refused when the model is given.
    with pytest.raises(ConfigFileError, match="made for another model"):
        resolve_methods(f"{tmp_path}/tuned.json", BASE, tiny_model("llama", num_hidden_layers=3))
    with pytest.raises(ConfigFileError, match="no SPTS config file"):
        resolve_methods(f"{tmp_path}/missing.json", BASE)
    with pytest.raises(ValueError, match="name before '='"):
        resolve_methods(f"my name={tmp_path}/tuned.json", BASE)


def test_selection_variants_append_to_config_files(tmp_path):
    tuned = BASE.with_(budgets=(0.7, 0.4), name="whatever")
    tuned.to_file(tmp_path / "tuned.json", model=tiny_model("llama"))
    spec = f"{tmp_path}/tuned.json+window8+recent16,mine={tmp_path}/tuned.json+acc"
    methods = {m.name: m for m in resolve_methods(spec, BASE, tiny_model("llama"))}
    assert list(methods) == ["tuned+window8+recent16", "mine+acc"]
    assert methods["tuned+window8+recent16"].config == tuned.with_(
        probe_tokens=8, recent_tokens=16, name="whatever+window8+recent16"
    )
    assert methods["mine+acc"].config.accumulate_scores and methods["mine+acc"].config.budgets == (0.7, 0.4)
    with pytest.raises(ValueError, match="unknown selection variant 'fast'"):
        resolve_methods(f"{tmp_path}/tuned.json+fast", BASE)
    with pytest.raises(ConfigFileError, match="made for another model"):
        resolve_methods(f"{tmp_path}/tuned.json+acc", BASE, tiny_model("llama", num_hidden_layers=3))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("fast", "unknown method"),
        ("spts@-1", "positive"),
        ("spts@x", "positive"),
        ("full,full", "repeat"),
        ("spts+fast", "unknown selection variant 'fast'"),
        ("spts+sinksN", "unknown selection variant"),
    ],
)
def test_method_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_methods(spec, BASE)


# ------------------------------------------------------------------------------------------------------------
# runs: resume, reports
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_setup():
    tokenizer = _tiny_tokenizer(chat=True)
    model = tiny_model("llama", vocab_size=len(tokenizer))
    return model, tokenizer, PromptRenderer(tokenizer)


def _samples(renderer, n):
    return build_samples(renderer, "niah_single,vt", [400], n=n)


def test_run_writes_rows_and_resumes_without_recomputing(tiny_setup, tmp_path, monkeypatch):
    model, tokenizer, renderer = tiny_setup
    methods = resolve_methods("full,spts", BASE)
    rows = run_eval(model, tokenizer, _samples(renderer, 1), methods, tmp_path, renderer=renderer, progress=False)
    assert [(r["sample_id"], r["method"]) for r in rows] == [
        ("niah_single/400/0", "full"), ("niah_single/400/0", "spts"), ("vt/400/0", "full"), ("vt/400/0", "spts"),
    ]  # fmt: skip
    for row in rows:
        assert 0.0 <= row["score"] <= 1.0 and row["ttft_s"] > 0 and row["prompt_tokens"] <= 400
    assert rows[0]["kv_fraction"] == 1.0 and rows[1]["kv_fraction"] < 1.0

    calls = []
    real = runner_module.run_method
    monkeypatch.setattr(runner_module, "run_method", lambda *a, **k: calls.append(a[3].sample_id) or real(*a, **k))
    # an interrupted write leaves half a line: it is dropped, that answer is recomputed
    path = tmp_path / "samples.jsonl"
    path.write_text(path.read_text() + '{"sample_id": "vt/400/1", "meth')
    again = run_eval(model, tokenizer, _samples(renderer, 2), methods, tmp_path, renderer=renderer, progress=False)
    assert calls == ["niah_single/400/1", "niah_single/400/1", "vt/400/1", "vt/400/1"]
    assert again[:4] == rows  # finished samples kept as they were
    assert len(path.read_text().splitlines()) == 8


def test_reusing_the_full_models_prefix_gives_the_same_answers_without_recomputing_it(tiny_setup, tmp_path):
    model, tokenizer, renderer = tiny_setup
    methods = resolve_methods("spts,full,fastkv@0.5:L3,gemfilter@0.5:L2,spts@2+acc", BASE, model)
    samples = _samples(renderer, 2)
    first_layer_prefills = []
    # On its MLP: a replayed layer is still called (and its hooks run), but computes nothing.
    handle = model.model.layers[0].mlp.register_forward_hook(
        lambda module, args, output: first_layer_prefills.append(args[0].shape[1]) if args[0].shape[1] > 256 else None
    )
    try:
        plain = run_eval(model, tokenizer, samples, methods, tmp_path / "plain", progress=False)
        calls_plain = len(first_layer_prefills)
        first_layer_prefills.clear()
        reused = run_eval(model, tokenizer, samples, methods, tmp_path / "reused", progress=False, reuse_prefix=True)
    finally:
        handle.remove()
    # Per sample, layer 0 runs on the whole prompt for the full model and GemFilter's first pass only.
    assert (calls_plain, len(first_layer_prefills)) == (5 * len(samples), 2 * len(samples))
    timing = ("ttft_s", "prefix_reused_s", "run")
    assert [{k: v for k, v in r.items() if k not in timing} for r in reused] == [
        {k: v for k, v in r.items() if k not in timing} for r in plain
    ]
    assert len({r["prediction"] for r in reused}) > 1
    for row in reused:
        replayed = row["method"] in ("spts", "fastkv@0.5:L3", "spts@2+acc")
        assert ("prefix_reused_s" in row) == replayed
        if replayed:
            assert 0 < row["prefix_reused_s"] < row["ttft_s"]


def test_speedups_pair_only_answers_timed_in_the_same_run(tiny_setup, tmp_path):
    model, tokenizer, renderer = tiny_setup
    samples = _samples(renderer, 1)
    first = run_eval(model, tokenizer, samples, resolve_methods("full,spts", BASE), tmp_path, progress=False)
    # A later run adds a method to the same folder: the full model's rows are kept from the first run.
    rows = run_eval(model, tokenizer, samples, resolve_methods("full,spts,pap", BASE), tmp_path, progress=False)
    assert rows[:2] == first[:2] and rows[2]["run"] != rows[0]["run"] == rows[1]["run"]
    averages = {a["method"]: a for a in summarize(rows)["averages"]}
    assert averages["spts"]["speedup"] > 0 and averages["pap"]["speedup"] is None
    table = markdown(summarize(rows))
    assert "| TTFT speedup | | 1.00x | " in table and table.split("| TTFT speedup |")[1].split("\n")[0].endswith(" - |")


def test_resume_refuses_changed_method_or_model(tiny_setup, tmp_path):
    model, tokenizer, renderer = tiny_setup
    samples = _samples(renderer, 1)[:1]
    spts_method = resolve_methods("spts", BASE)
    run_eval(model, tokenizer, samples, spts_method, tmp_path, run_info={"model": "a"}, progress=False)
    changed = resolve_methods("spts", BASE.with_(budgets=(0.3, 0.1)))
    with pytest.raises(ResumeError, match="another configuration"):
        run_eval(model, tokenizer, samples, changed, tmp_path, run_info={"model": "a"}, progress=False)
    with pytest.raises(ResumeError, match="model 'a', not 'b'"):
        run_eval(model, tokenizer, samples, spts_method, tmp_path, run_info={"model": "b"})


def test_resume_refuses_rows_that_answered_another_prompt(tiny_setup, tmp_path):
    model, tokenizer, renderer = tiny_setup
    methods = resolve_methods("full", BASE)
    seed0 = build_samples(renderer, "niah_single", [400], n=1, seed=0)
    seed1 = build_samples(renderer, "niah_single", [400], n=1, seed=1)
    assert seed0[0].sample_id == seed1[0].sample_id and seed0[0].user != seed1[0].user
    (row,) = run_eval(model, tokenizer, seed0, methods, tmp_path, renderer=renderer, progress=False)
    assert row["prompt_sha"] == runner_module.prompt_digest(renderer.input_ids(seed0[0]))
    with pytest.raises(ResumeError, match="another prompt than this run builds for sample 'niah_single/400/0'"):
        run_eval(model, tokenizer, seed1, methods, tmp_path, renderer=renderer, progress=False)

    # Rows written before rows named their prompt: resumed when prompt length and references agree, else refused.
    path = tmp_path / "samples.jsonl"
    legacy = {k: v for k, v in row.items() if k != "prompt_sha"}
    path.write_text(json.dumps(legacy) + "\n")
    assert run_eval(model, tokenizer, seed0, methods, tmp_path, renderer=renderer, progress=False) == [legacy]
    for changed in ({"prompt_tokens": legacy["prompt_tokens"] - 1}, {"references": list(seed1[0].references)}):
        path.write_text(json.dumps(legacy | changed) + "\n")
        with pytest.raises(ResumeError, match="another prompt"):
            run_eval(model, tokenizer, seed0, methods, tmp_path, renderer=renderer, progress=False)


def test_copy_from_reuses_answers_to_the_same_prompts_under_the_same_configs(tiny_setup, tmp_path, monkeypatch):
    model, tokenizer, renderer = tiny_setup
    samples = _samples(renderer, 1)
    earlier = run_eval(model, tokenizer, samples, resolve_methods("full,spts", BASE), tmp_path / "a", progress=False)
    BASE.to_file(tmp_path / "mine.json", model=model)  # spts's config under another name
    methods = resolve_methods(f"full,mine={tmp_path}/mine.json,pap", BASE, model)

    calls = []
    real = runner_module.run_method
    monkeypatch.setattr(runner_module, "run_method", lambda *a, **k: calls.append(a[4].name) or real(*a, **k))
    rows = run_eval(model, tokenizer, samples, methods, tmp_path / "b", progress=False, copy_from=[tmp_path / "a"])
    assert calls == ["pap", "pap"]  # full and mine copied, on both samples
    by_key = {(r["sample_id"], r["method"]): r for r in rows}
    for row in earlier:
        name = "mine" if row["method"] == "spts" else row["method"]
        copied = by_key[(row["sample_id"], name)]
        assert copied == row | {"method": name, "copied_from": str(tmp_path / "a")}
    # copied rows keep their run, so only they pair with the copied full model's TTFT
    averages = {a["method"]: a for a in summarize(rows)["averages"]}
    assert averages["mine"]["speedup"] > 0 and averages["pap"]["speedup"] is None
    # written to the new folder: a rerun resumes without copying or computing anything
    calls.clear()
    assert run_eval(model, tokenizer, samples, methods, tmp_path / "b", progress=False) == rows and calls == []

    # answers to other prompts (another seed) are not copied
    other_seed = build_samples(renderer, "niah_single,vt", [400], n=1, seed=1)
    run_eval(model, tokenizer, other_seed, methods[:1], tmp_path / "c", progress=False, copy_from=[tmp_path / "a"])
    assert calls == ["full", "full"]
    with pytest.raises(FileNotFoundError, match=r"no samples\.jsonl"):
        run_eval(model, tokenizer, samples, methods, tmp_path / "d", progress=False, copy_from=[tmp_path / "none"])


def test_reports_have_every_figure(tiny_setup, tmp_path):
    model, tokenizer, renderer = tiny_setup
    methods = resolve_methods("full,pap,spts", BASE)
    rows = run_eval(model, tokenizer, _samples(renderer, 2), methods, tmp_path, renderer=renderer, progress=False)
    summary = write_reports(rows, tmp_path, header="tiny run")
    for name in ("summary.json", "table.md", "accuracy_vs_speedup.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(summary["cells"]) == 2 * 3
    for cell in summary["cells"]:
        assert cell["n"] == 2 and 0 <= cell["score"] <= 100 and cell["ttft_median_s"] > 0 and cell["speedup"] > 0
    averages = {a["method"]: a for a in summary["averages"]}
    assert averages["full"]["speedup"] == 1.0 and averages["spts"]["kv_fraction"] < 1.0
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("tiny run") and "| niah_single | 2 |" in table and "TTFT speedup" in table
    assert json.loads((tmp_path / "summary.json").read_text())["methods"] == ["full", "pap", "spts"]
