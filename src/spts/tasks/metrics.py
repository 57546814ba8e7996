"""Scoring functions: LongBench's metrics (as its ``metrics.py`` defines them) and RULER's string matches.

Every metric takes ``(prediction, reference, all_classes)`` and returns a score in [0, 1]; a sample's
score is the best over its references, as both benchmarks do. LongBench's definitions are followed to the
letter, quirks included, so that numbers computed here are comparable with its published tables:

* QA F1 lowercases, strips punctuation and English articles, then computes token-level F1; the Chinese
  variant segments with jieba and strips Chinese punctuation too.
* ROUGE-L is the F-measure of the ``rouge`` package (which LongBench uses), Chinese text pre-segmented
  with jieba.
* Classification scores 1/k when the reference class is among the k classes named in the prediction;
  classes that are substrings of the reference are dropped first, with LongBench's loop that skips the
  entry following each dropped one.
* Retrieval and count scores are the fraction of numbers in the prediction equal to the right one.
* Code similarity is the fuzzy ratio (Levenshtein, as fuzzywuzzy computes it) of the first prediction line
  that is not a comment or a code fence.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

Metric = Callable[[str, str, Sequence[str]], float]

_EVAL_EXTRA = "pip install 'spts[eval]'  (installs rouge, jieba and thefuzz)"
_ZH_PUNCTUATION = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣"
    "､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"this metric needs the {module!r} package: {_EVAL_EXTRA}") from None


def _jieba_cut(text: str) -> list[str]:
    jieba = _require("jieba")
    jieba.setLogLevel(60)  # its "Building prefix dict" chatter on first use
    return list(jieba.cut(text, cut_all=False))


def normalize_answer(text: str) -> str:
    """SQuAD/LongBench normalisation: lowercase, no punctuation, no English articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def normalize_zh_answer(text: str) -> str:
    """The Chinese normalisation: lowercase, no ASCII or Chinese punctuation, no whitespace at all."""
    punctuation = set(string.punctuation + _ZH_PUNCTUATION)
    return "".join("".join(ch for ch in text.lower() if ch not in punctuation).split())


def _token_f1(prediction: Sequence[str], reference: Sequence[str]) -> float:
    common = Counter(prediction) & Counter(reference)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(prediction)
    recall = same / len(reference)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    return _token_f1(normalize_answer(prediction).split(), normalize_answer(reference).split())


def qa_f1_zh(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    def tokens(text: str) -> list[str]:
        return [t for t in (normalize_zh_answer(t) for t in _jieba_cut(text)) if t]

    return _token_f1(tokens(prediction), tokens(reference))


def rouge_l(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    rouge = _require("rouge")
    try:
        scores = rouge.Rouge().get_scores([prediction], [reference], avg=True)
    except (ValueError, RecursionError):  # empty hypothesis or reference, as LongBench scores them: 0
        return 0.0
    return float(scores["rouge-l"]["f"])


def rouge_l_zh(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    return rouge_l(" ".join(_jieba_cut(prediction)), " ".join(_jieba_cut(reference)))


def classification(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    named = [name for name in all_classes if name in prediction]
    # LongBench removes from the list it is iterating over, so the entry after each removed one is never
    # checked; reproduced so that scores match its tables.
    i = 0
    while i < len(named):
        if named[i] in reference and named[i] != reference:
            del named[i]
        i += 1
    return 1.0 / len(named) if reference in named else 0.0


def _fraction_equal(prediction: str, right: str) -> float:
    numbers = re.findall(r"\d+", prediction)
    return sum(1 for n in numbers if n == right) / len(numbers) if numbers else 0.0


def retrieval(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    return _fraction_equal(prediction, re.findall(r"Paragraph (\d+)", reference)[0])


def retrieval_zh(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    return _fraction_equal(prediction, re.findall(r"段落(\d+)", reference)[0])


def count(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    return _fraction_equal(prediction, str(reference))


def code_similarity(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    fuzz = _require("thefuzz.fuzz")
    first_code_line = next(
        (line for line in prediction.lstrip("\n").split("\n") if not any(m in line for m in ("`", "#", "//"))), ""
    )
    return fuzz.ratio(first_code_line, reference) / 100


def contains(prediction: str, reference: str, all_classes: Sequence[str] = ()) -> float:
    """RULER's match for one reference: it occurs in the prediction (case-insensitive)."""
    return float(reference.lower() in prediction.lower())


METRICS: dict[str, Metric] = {
    "qa_f1": qa_f1,
    "qa_f1_zh": qa_f1_zh,
    "rouge_l": rouge_l,
    "rouge_l_zh": rouge_l_zh,
    "classification": classification,
    "retrieval": retrieval,
    "retrieval_zh": retrieval_zh,
    "count": count,
    "code_similarity": code_similarity,
    "contains": contains,
}

#: How a sample's references combine: LongBench and RULER's QA take the best one; RULER's other tasks
#: (``string_match_all``) the fraction of references found.
AGGREGATIONS = ("best", "all")


def score(
    metric: str, prediction: str, references: Sequence[str], all_classes: Sequence[str] = (), aggregate: str = "best"
) -> float:
    """A sample's score in [0, 1] under ``metric`` (a key of :data:`METRICS`)."""
    try:
        fn = METRICS[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}") from None
    if not references:
        raise ValueError("a sample needs at least one reference answer")
    values = [fn(prediction, reference, all_classes) for reference in references]
    if aggregate == "best":
        return max(values)
    if aggregate == "all":
        return sum(values) / len(values)
    raise ValueError(f"unknown aggregation {aggregate!r}; known: {', '.join(AGGREGATIONS)}")
