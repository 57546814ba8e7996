"""The LongBench-format family: LongBench records generated offline at any length and seed.

A second prompt family beside the RULER-style and QA generators, built so that a schedule tuned on one family can
be checked on another. Each sample is a LongBench record (``context``, ``input``, ``answers``, ``length``,
``dataset``, ``language``, ``_id``) rendered through the same functions as LongBench's own files
(:func:`spts.tasks.longbench.record_user`, :func:`~spts.tasks.longbench.sample_format`): the official prompt, answer
budget, metric and chat-template rule of the LongBench task it follows.
:func:`~spts.tasks.longbench.write_longbench_files` writes them as ``<task>.jsonl`` files that
``spts eval --longbench-dir`` reads back as the same prompts.

* ``lbf_multifieldqa_en`` (single-document QA, ``multifieldqa_en``): one long document of whole Wikipedia articles
  (SQuAD v2 dev, titles and paragraphs in their own order), a window of it around the paragraph that answers a SQuAD
  question, at the sample's depth. Unlike ``qa_squad`` (paragraphs shuffled among other paragraphs), the text reads
  as one document, as LongBench's are.
* ``lbf_hotpotqa`` (multi-document QA, ``hotpotqa``): HotpotQA's two gold passages among the question's own
  distractors and passages of other questions, in random order, numbered as LongBench numbers them.

Where the data ends, the family does too: LongBench's other tasks need data that does not install here
(narratives, papers, summaries, Chinese text, few-shot sets), and a substitute would measure something else.
Prompts are fitted to a length drawn per sample from 80-100% of the target, as real data varies in length; so
fraction budgets are checked on lengths they were not tuned at.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from spts.tasks.base import Built, TaskSpec
from spts.tasks.longbench import record_user, sample_format
from spts.tasks.qa import hotpotqa, squad, squad_articles

LENGTH_SPREAD = 0.2
LONGEST_FILLER_WORDS = 250
"""Distractor passages longer than this (a few HotpotQA paragraphs are long lists) are left out, so that a prompt
can be fitted to its length a passage at a time."""


def _record(task: str, context: str, question: str, answers: tuple[str, ...]) -> dict:
    digest = hashlib.sha256(f"{task}\n{question}\n{context}".encode()).hexdigest()[:24]
    return {
        "input": question,
        "context": context,
        "answers": list(answers),
        "length": len(context.split()),
        "dataset": task,
        "language": "en",
        "all_classes": None,
        "_id": f"spts-lbf-{digest}",
    }


def _built(task: str, context: str, question: str, answers: tuple[str, ...], depth: float) -> Built:
    record = _record(task, context, question, answers)
    return Built(record_user(task, record), "", answers, depth, record)


def _single_document(rng: random.Random, depth: float, target_tokens: int) -> tuple[Callable[[int], Built], int]:
    """Whole SQuAD articles in order, other articles before and after the gold one; ``make(k)`` is the window of
    ``k`` paragraphs that holds the gold paragraph at relative position ``depth``."""
    questions, docs = squad()
    question = rng.choice(questions)
    gold = question.gold[0]
    articles = squad_articles()
    home = next(i for i, (_, paragraphs) in enumerate(articles) if gold in paragraphs)
    others = [i for i in range(len(articles)) if i != home]
    rng.shuffle(others)
    needed = target_tokens // 40 + 16  # paragraphs run well over 40 tokens: enough on either side
    before: list[int] = []
    while sum(len(articles[i][1]) for i in before) < needed and len(before) < len(others) // 2:
        before.append(others[len(before)])
    after = others[len(before) :]
    # The document as (article, paragraph) units; an article's first paragraph carries its title.
    units = [(a, p) for a in [*before, home, *after] for p in articles[a][1]]
    at = units.index((home, gold))

    def make(k: int) -> Built:
        k = max(k, 1)
        start = min(max(0, at - round(depth * (k - 1))), len(units) - k)
        window = units[start : start + k]
        parts = []
        for a, p in window:
            title, paragraphs = articles[a]
            text = docs[p]
            parts.append(f"{title.replace('_', ' ')}\n\n{text}" if p == paragraphs[0] else text)
        where = (at - start) / max(1, k - 1)
        return _built("multifieldqa_en", "\n\n".join(parts), question.text, question.answers, where)

    return make, len(units)


def _multi_document(rng: random.Random, depth: float, target_tokens: int) -> tuple[Callable[[int], Built], int]:
    """The question's gold and distractor passages, then other questions' passages, shuffled; numbered."""
    questions, docs = hotpotqa()
    question = rng.choice(questions)
    taken = set(question.gold) | set(question.near)
    n_others = min(len(docs) - len(taken), target_tokens // 20 + 16)
    others = [i for i in rng.sample(range(len(docs)), min(len(docs), n_others + len(taken))) if i not in taken]
    fillers = [i for i in [*question.near, *others] if len(docs[i].split()) <= LONGEST_FILLER_WORDS]
    order_seed = rng.random()

    def make(k: int) -> Built:
        passages = [*question.gold, *fillers[:k]]
        random.Random(f"{order_seed}/{k}").shuffle(passages)
        context = "\n".join(f"Passage {i + 1}:\n{docs[d]}" for i, d in enumerate(passages))
        first = min(passages.index(g) for g in question.gold)
        return _built("hotpotqa", context, question.text, question.answers, first / max(1, len(passages) - 1))

    return make, len(fillers)


def _spec(name: str, task: str, prepare, description: str, uses_depth: bool) -> TaskSpec:
    fmt = sample_format(task)
    return TaskSpec(
        name,
        "longbench-format",
        str(fmt["metric"]),
        int(fmt["max_new_tokens"]),  # type: ignore[call-overload]
        "best",
        prepare,
        uses_depth=uses_depth,
        description=description,
        use_chat_template=bool(fmt["use_chat_template"]),
        first_line_only=bool(fmt["first_line_only"]),
        length_spread=LENGTH_SPREAD,
    )


LONGBENCH_FORMAT_TASKS = (
    _spec("lbf_multifieldqa_en", "multifieldqa_en", _single_document,
          "SQuAD article window as one document (LongBench multifieldqa_en format)", uses_depth=True),
    _spec("lbf_hotpotqa", "hotpotqa", _multi_document,
          "HotpotQA passages among distractors, shuffled (LongBench hotpotqa format)", uses_depth=False),
)  # fmt: skip
