"""LongBench's and RULER's metrics against hand-worked examples."""

from __future__ import annotations

import math

import pytest

from spts.tasks.metrics import (
    classification,
    code_similarity,
    count,
    normalize_answer,
    qa_f1,
    qa_f1_zh,
    retrieval,
    retrieval_zh,
    rouge_l,
    rouge_l_zh,
    score,
)


def test_normalize_answer_drops_case_punctuation_articles():
    assert normalize_answer("The  Eiffel Tower, in Paris!") == "eiffel tower in paris"
    assert normalize_answer("An apple a day") == "apple day"


def test_qa_f1_worked_example():
    # prediction tokens: eiffel tower is in paris (5); reference: eiffel tower (2); overlap 2.
    # precision 2/5, recall 2/2 -> F1 = 2 * 0.4 * 1 / 1.4 = 4/7
    assert qa_f1("The Eiffel Tower is in Paris.", "the Eiffel Tower") == pytest.approx(4 / 7)
    assert qa_f1("Paris", "paris!") == 1.0
    assert qa_f1("London", "Paris") == 0.0
    assert qa_f1("", "Paris") == 0.0
    # repeated tokens count once per occurrence on both sides (multiset overlap)
    assert qa_f1("yes yes", "yes") == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_qa_f1_zh_segments_with_jieba():
    assert qa_f1_zh("北京", "北京。") == 1.0
    assert qa_f1_zh("上海", "北京") == 0.0
    value = qa_f1_zh("我爱北京", "北京")
    assert 0.0 < value < 1.0


def test_rouge_l_worked_example():
    # LCS "the cat on a mat": 5 tokens of 6 on each side -> P = R = F = 5/6 (up to the package's epsilon)
    assert rouge_l("the cat sat on a mat", "the cat lay on a mat") == pytest.approx(5 / 6, abs=1e-6)
    # LCS "one two four": P = 3/4, R = 3/5 -> F = 2PR / (P + R) = 2/3
    assert rouge_l("one two three four", "one two five four six") == pytest.approx(2 / 3, abs=1e-6)
    assert rouge_l("", "anything") == 0.0  # the rouge package refuses an empty hypothesis: scored 0
    assert rouge_l_zh("今天天气很好", "今天天气很好") == pytest.approx(1.0, abs=1e-6)


def test_classification_worked_examples():
    classes = ["Location", "Country", "City", "Individual"]
    assert classification("Type: City", "City", classes) == 1.0
    assert classification("City or Country", "City", classes) == 0.5  # two classes named: 1/2
    assert classification("Individual", "City", classes) == 0.0
    # classes that are substrings of the reference (but not it) do not count against it
    assert classification("Other entity", "Other entity", ["Other", "Other entity"]) == 1.0
    # LongBench's loop skips the entry after each removed one: "a" is removed, "ab" is never checked and
    # stays, so the score is 1/2, not 1.
    assert classification("abc", "abc", ["a", "ab", "abc"]) == 0.5


def test_retrieval_and_count():
    assert retrieval("Paragraph 3", "Paragraph 3") == 1.0
    assert retrieval("Paragraph 3 or Paragraph 12", "Paragraph 3") == 0.5
    assert retrieval("I don't know", "Paragraph 3") == 0.0
    assert retrieval_zh("段落5", "段落5") == 1.0
    assert count("There are 7 unique paragraphs, not 8", "7") == 0.5
    assert count("none", "7") == 0.0


def test_code_similarity_uses_first_code_line():
    # comment and fence lines are skipped; "x = 1" vs "x = 2": Indel distance 2 over 10 characters -> 0.8
    assert code_similarity("```python\n# set x\nx = 1\ny = 2", "x = 2") == pytest.approx(0.8)
    assert code_similarity("return value", "return value") == 1.0


def test_score_aggregations():
    assert score("contains", "the numbers are 123 and 456", ["123", "456", "789"], aggregate="all") == pytest.approx(
        2 / 3
    )
    assert score("contains", "123", ["123", "456"], aggregate="best") == 1.0
    assert score("qa_f1", "Paris", ["London", "Paris"]) == 1.0
    assert math.isclose(score("contains", "ABC", ["abc"]), 1.0)  # RULER matches case-insensitively


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(metric="bleu", prediction="x", references=["x"]), "unknown metric"),
        (dict(metric="qa_f1", prediction="x", references=[]), "at least one reference"),
        (dict(metric="qa_f1", prediction="x", references=["x"], aggregate="mean"), "unknown aggregation"),
    ],
)
def test_score_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        score(**kwargs)
