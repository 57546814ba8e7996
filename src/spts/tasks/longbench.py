"""The real LongBench (Bai et al., 2023) from its JSONL files on disk, with each task's official prompt
template, generation budget and metric, so that scores compare with published tables.

LongBench cannot be downloaded on machines without a dataset hub; a user who has it (``data/*.jsonl``
from the ``THUDM/LongBench`` release, or LongBench-E's ``*_e.jsonl``) points the evaluator at that folder.
Prompts longer than the model allows are truncated in the middle and the chat template is skipped for
the few-shot and code tasks, as LongBench's ``pred.py`` does; few-shot tasks are graded on their first
line, as its ``eval.py`` does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from spts.tasks.prompts import EvalSample

# Official prompts (LongBench config/dataset2prompt.json); {context} and {input} come from each record.
PROMPTS: dict[str, str] = {
    "narrativeqa": "You are given a story, which can be either a novel or a movie script, and a question. Answer the question as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: {context}\n\nNow, answer the question based on the story as concisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "qasper": "You are given a scientific article and a question. Answer the question as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the above article as concisely as you can, using a single phrase or sentence if possible. If the question cannot be answered based on the information in the article, write \"unanswerable\". If the question is a yes/no question, answer \"yes\", \"no\", or \"unanswerable\". Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:",
    "multifieldqa_en": "Read the following text and answer briefly.\n\n{context}\n\nNow, answer the following question based on the above text, only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "multifieldqa_zh": "阅读以下文字并用中文简短回答：\n\n{context}\n\n现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：{input}\n回答：",
    "hotpotqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "2wikimqa": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "musique": "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\nThe following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:",
    "dureader": "请基于给定的文章回答下述问题。\n\n文章：{context}\n\n请基于上述文章回答下面的问题。\n\n问题：{input}\n回答：",
    "gov_report": "You are given a report by a government agency. Write a one-page summary of the report.\n\nReport:\n{context}\n\nNow, write a one-page summary of the report.\n\nSummary:",
    "qmsum": "You are given a meeting transcript and a query containing a question or instruction. Answer the query in one or more sentences.\n\nTranscript:\n{context}\n\nNow, answer the query based on the above meeting transcript in one or more sentences.\n\nQuery: {input}\nAnswer:",
    "multi_news": "You are given several news passages. Write a one-page summary of all news. \n\nNews:\n{context}\n\nNow, write a one-page summary of all the news.\n\nSummary:",
    "vcsum": "下面有一段会议记录，请你阅读后，写一段总结，总结会议的内容。\n会议记录：\n{context}\n\n会议总结：",
    "trec": "Please determine the type of the question below. Here are some examples of questions.\n\n{context}\n{input}",
    "triviaqa": "Answer the question based on the given passage. Only give me the answer and do not output any other words. The following are some examples.\n\n{context}\n\n{input}",
    "samsum": "Summarize the dialogue into a few short sentences. The following are some examples.\n\n{context}\n\n{input}",
    "lsht": "请判断给定新闻的类别，下面是一些例子。\n\n{context}\n{input}",
    "passage_count": "There are some paragraphs below sourced from Wikipedia. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n{context}\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ",
    "passage_retrieval_en": "Here are 30 paragraphs from Wikipedia, along with an abstract. Please determine which paragraph the abstract is from.\n\n{context}\n\nThe following is an abstract.\n\n{input}\n\nPlease enter the number of the paragraph that the abstract is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ",
    "passage_retrieval_zh": "以下是若干段落文字，以及其中一个段落的摘要。请确定给定的摘要出自哪一段。\n\n{context}\n\n下面是一个摘要\n\n{input}\n\n请输入摘要所属段落的编号。答案格式必须是\"段落1\"，\"段落2\"等格式\n\n答案是：",
    "lcc": "Please complete the code given below. \n{context}Next line of code:\n",
    "repobench-p": "Please complete the code given below. \n{context}{input}Next line of code:\n",
}  # fmt: skip

# Official generation budgets (config/dataset2maxlen.json).
MAX_NEW_TOKENS: dict[str, int] = {
    "narrativeqa": 128, "qasper": 128, "multifieldqa_en": 64, "multifieldqa_zh": 64, "hotpotqa": 32,
    "2wikimqa": 32, "musique": 32, "dureader": 128, "gov_report": 512, "qmsum": 512, "multi_news": 512,
    "vcsum": 512, "trec": 64, "triviaqa": 32, "samsum": 128, "lsht": 64, "passage_count": 32,
    "passage_retrieval_en": 32, "passage_retrieval_zh": 32, "lcc": 64, "repobench-p": 64,
}  # fmt: skip

# Official metrics (eval.py's dataset2metric), by the names of spts.tasks.metrics.METRICS.
METRIC: dict[str, str] = {
    "narrativeqa": "qa_f1", "qasper": "qa_f1", "multifieldqa_en": "qa_f1", "multifieldqa_zh": "qa_f1_zh",
    "hotpotqa": "qa_f1", "2wikimqa": "qa_f1", "musique": "qa_f1", "dureader": "rouge_l_zh",
    "gov_report": "rouge_l", "qmsum": "rouge_l", "multi_news": "rouge_l", "vcsum": "rouge_l_zh",
    "trec": "classification", "triviaqa": "qa_f1", "samsum": "rouge_l", "lsht": "classification",
    "passage_retrieval_en": "retrieval", "passage_count": "count", "passage_retrieval_zh": "retrieval_zh",
    "lcc": "code_similarity", "repobench-p": "code_similarity",
}  # fmt: skip

#: Chat models are better off without a chat template on these (pred.py).
NO_CHAT_TEMPLATE = frozenset({"trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"})
#: Graded on the first line of the reply (eval.py).
FIRST_LINE = frozenset({"trec", "triviaqa", "samsum", "lsht"})

TASKS = tuple(PROMPTS)


def _file(folder: Path, task: str) -> Path:
    path = folder / f"{task}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: point --longbench-dir at the folder holding LongBench's data/*.jsonl files "
            f"(one per task, e.g. hotpotqa.jsonl; LongBench-E files end in _e.jsonl)"
        )
    return path


def sample_format(task: str) -> dict[str, object]:
    """How LongBench generates and grades answers to ``task`` (``_e`` for LongBench-E): its generation budget,
    metric, whether the chat template applies and whether only the reply's first line is graded."""
    base = task.removesuffix("_e")
    if base not in PROMPTS:
        raise ValueError(f"unknown LongBench task {task!r}; known: {', '.join(TASKS)} (add _e for LongBench-E)")
    return {
        "metric": METRIC[base],
        "max_new_tokens": MAX_NEW_TOKENS[base],
        "use_chat_template": base not in NO_CHAT_TEMPLATE,
        "first_line_only": base in FIRST_LINE,
    }


def record_user(task: str, record: dict) -> str:
    """The user turn of a LongBench record: the task's official prompt around its context and input."""
    return PROMPTS[task.removesuffix("_e")].format(context=record["context"], input=record["input"])


def longbench_samples(folder: str | Path, task: str, limit: int | None = None) -> list[EvalSample]:
    """The first ``limit`` records of LongBench task ``task`` (e.g. ``"hotpotqa"``, or ``"hotpotqa_e"`` for
    LongBench-E) read from ``folder``, as samples with the official prompt, budget and metric."""
    fmt = sample_format(task)
    samples = []
    with _file(Path(folder), task).open(encoding="utf-8") as lines:
        for index, line in enumerate(lines):
            if limit is not None and index >= limit:
                break
            record = json.loads(line)
            missing = {"input", "context", "answers"} - set(record)
            if missing:
                raise ValueError(f"{task}.jsonl line {index + 1} is not a LongBench record: no {', '.join(missing)}")
            samples.append(
                EvalSample(
                    task=f"longbench/{task}",
                    index=index,
                    target_tokens=None,
                    user=record_user(task, record),
                    references=tuple(record["answers"]),
                    all_classes=tuple(record.get("all_classes") or ()),
                    meta={"length": record.get("length"), "_id": record.get("_id")},
                    **fmt,  # type: ignore[arg-type]
                )
            )
    return samples


def write_longbench_files(samples: Sequence[EvalSample], folder: str | Path) -> list[Path]:
    """Write generated samples that carry a LongBench record (the LongBench-format family) as LongBench's
    ``<task>.jsonl`` files in ``folder``, one file per LongBench task, so that ``spts eval --longbench-dir`` (or
    any LongBench harness) reads them back. Returns the files written."""
    by_task: dict[str, list[dict]] = {}
    for sample in samples:
        record = sample.meta.get("record")
        if record is None:
            raise ValueError(f"sample {sample.sample_id} is not LongBench-format (no record); use an lbf_* task")
        by_task.setdefault(record["dataset"], []).append(record)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for task, records in by_task.items():
        path = folder / f"{task}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        written.append(path)
    return written
