"""The LongBench-format family (spts.tasks.longbench_format): LongBench records generated offline, rendered through
the same path as LongBench's own files, at lengths within tolerance, reproducible per seed and apart from the
tuner's prompts, with the answer in the context."""

from __future__ import annotations

import json

import pytest

from spts.tasks import GROUPS, TASKS, PromptRenderer, build_samples, generate, longbench_samples, write_longbench_files
from spts.tasks.longbench import PROMPTS, sample_format
from spts.tasks.longbench_format import LENGTH_SPREAD
from spts.tasks.qa import hotpotqa
from spts.tuning.prompts import TUNE_SEED_OFFSET, generated_prompts
from test_zoo_haystack import _tiny_tokenizer

LBF = GROUPS["lbf"]


@pytest.fixture(scope="module")
def renderer():
    return PromptRenderer(_tiny_tokenizer(chat=True))


def test_the_family_is_a_group_of_its_own():
    assert set(LBF) == {"lbf_multifieldqa_en", "lbf_hotpotqa"}
    assert not set(LBF) & set(GROUPS["all"])  # "all" stays the first family, as recorded runs named it


@pytest.mark.parametrize("task", LBF)
def test_samples_follow_longbench_prompt_budget_and_metric(renderer, task):
    sample = generate(TASKS[task], renderer, 3000, index=2, seed=0)
    record = sample.meta["record"]
    base = record["dataset"]
    assert task == f"lbf_{base}"
    assert sample.user == PROMPTS[base].format(context=record["context"], input=record["input"])
    fmt = sample_format(base)
    assert (sample.metric, sample.max_new_tokens) == (fmt["metric"], fmt["max_new_tokens"])
    assert (sample.use_chat_template, sample.first_line_only) == (fmt["use_chat_template"], fmt["first_line_only"])
    assert tuple(record["answers"]) == sample.references and sample.answer_prefix == ""
    assert record["length"] == len(record["context"].split()) and record["_id"].startswith("spts-lbf-")


@pytest.mark.parametrize("task", LBF)
@pytest.mark.parametrize("length", [1500, 4000])
def test_lengths_fall_within_the_spread_below_the_target(renderer, task, length):
    counts = []
    for index in range(6):
        sample = generate(TASKS[task], renderer, length, index, seed=1)
        counts.append(renderer.count(sample.user, sample.answer_prefix, sample.use_chat_template))
    # Fitted to a length drawn from [(1 - spread) * target, target]; a paragraph or passage is the fitting step.
    assert all((1 - LENGTH_SPREAD) * length - 400 <= n <= length for n in counts), counts
    assert len(set(counts)) > 1  # the lengths do vary


@pytest.mark.parametrize("task", LBF)
def test_generation_is_reproducible_per_seed_and_the_tuners_prompts_are_other_prompts(renderer, task):
    spec = TASKS[task]
    first, again = (generate(spec, renderer, 2000, 5, seed=0) for _ in range(2))
    assert first == again and first.meta["record"] == again.meta["record"]
    assert generate(spec, renderer, 2000, 5, seed=1).user != first.user
    evaluated = {tuple(renderer.input_ids(generate(spec, renderer, 2000, i, seed=0))[0].tolist()) for i in range(4)}
    tuned = {tuple(p.input_ids[0].tolist()) for p in generated_prompts(renderer, 4, 2000, 0, [task])}
    assert len(evaluated) == len(tuned) == 4 and not evaluated & tuned
    assert all(p.prompt_id.endswith(f"seed{TUNE_SEED_OFFSET}") for p in generated_prompts(renderer, 2, 2000, 0, [task]))


def test_the_answer_is_in_the_context(renderer):
    for index in range(4):
        single = generate(TASKS["lbf_multifieldqa_en"], renderer, 2500, index, seed=0)
        context = single.meta["record"]["context"]
        assert any(answer in context for answer in single.references)
        multi = generate(TASKS["lbf_hotpotqa"], renderer, 2500, index, seed=0)
        question = next(q for q in hotpotqa()[0] if q.text == multi.meta["record"]["input"])
        docs = hotpotqa()[1]
        for gold in question.gold:  # both supporting passages, numbered as LongBench numbers passages
            assert f":\n{docs[gold]}\n" in multi.meta["record"]["context"] + "\n"


def test_the_single_document_keeps_the_articles_order_and_puts_the_answer_at_the_depth(renderer):
    sample = generate(TASKS["lbf_multifieldqa_en"], renderer, 3000, index=0, seed=0, depth=0.7)
    context = sample.meta["record"]["context"]
    at = min(context.find(a) for a in sample.references if a in context)
    assert at / len(context) == pytest.approx(0.7, abs=0.15)
    assert sample.depth == pytest.approx(0.7, abs=0.1)


def test_written_files_read_back_as_the_same_prompts(renderer, tmp_path):
    samples = build_samples(renderer, "lbf", [2000], 3, seed=4)
    written = write_longbench_files(samples, tmp_path)
    assert sorted(p.name for p in written) == ["hotpotqa.jsonl", "multifieldqa_en.jsonl"]
    for task in ("multifieldqa_en", "hotpotqa"):
        ours = [s for s in samples if s.meta["record"]["dataset"] == task]
        read = longbench_samples(tmp_path, task)
        assert len(read) == len(ours) == 3
        for mine, theirs in zip(ours, read, strict=True):
            assert theirs.user == mine.user and theirs.references == mine.references
            assert (theirs.metric, theirs.max_new_tokens, theirs.use_chat_template, theirs.first_line_only) == (
                mine.metric, mine.max_new_tokens, mine.use_chat_template, mine.first_line_only)  # fmt: skip
            assert renderer.input_ids(theirs).tolist() == renderer.input_ids(mine).tolist()
            assert json.loads(json.dumps(mine.meta["record"]))["_id"] == theirs.meta["_id"]


def test_only_longbench_format_samples_can_be_written(renderer, tmp_path):
    (sample,) = build_samples(renderer, "qa_squad", [1500], 1)
    with pytest.raises(ValueError, match="not LongBench-format"):
        write_longbench_files([sample], tmp_path)
