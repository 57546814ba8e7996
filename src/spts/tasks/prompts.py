"""Evaluation samples and how they become token ids: chat template or not, middle truncation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CHAT_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class EvalSample:
    """One prompt to answer and how to grade the answer."""

    task: str
    index: int
    target_tokens: int | None
    """Prompt length the sample was built for; None for data read from disk (LongBench)."""
    user: str
    """The user turn: instruction, context and question (no chat markup)."""
    references: tuple[str, ...]
    metric: str
    max_new_tokens: int
    answer_prefix: str = ""
    """Start of the reply appended after the prompt (RULER's answer prefix), part of the model's input."""
    aggregate: str = "best"
    depth: float | None = None
    """Relative position (0 = start, 1 = end of the context) of the information the answer needs."""
    use_chat_template: bool = True
    """False for tasks that are better off without one (LongBench's few-shot and code tasks)."""
    first_line_only: bool = False
    """Grade only the first line of the reply (LongBench's few-shot tasks)."""
    all_classes: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def sample_id(self) -> str:
        length = self.target_tokens if self.target_tokens is not None else "native"
        return f"{self.task}/{length}/{self.index}"


class PromptRenderer:
    """Turns a user turn into model input: the chat template when the model has one (and the caller wants
    it), else the plain text; then the answer prefix. Over-long prompts are truncated in the middle, as
    LongBench does (instructions sit at both ends)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, chat: str = "auto", max_prompt_tokens: int | None = None):
        if chat not in CHAT_MODES:
            raise ValueError(f"chat must be one of {', '.join(CHAT_MODES)}, got {chat!r}")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat == "on" and not has_template:
            raise ValueError("chat='on' but this tokenizer has no chat template (a base model?); use chat='off'")
        if max_prompt_tokens is not None and max_prompt_tokens < 16:
            raise ValueError(f"max_prompt_tokens must be at least 16, got {max_prompt_tokens}")
        self.tokenizer = tokenizer
        self.chat = has_template and chat != "off"
        self.max_prompt_tokens = max_prompt_tokens

    def text(self, user: str, answer_prefix: str = "", use_chat_template: bool = True) -> tuple[str, bool]:
        """Prompt text and whether the tokenizer should still add its special tokens (no template)."""
        if self.chat and use_chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
            )
            return text + answer_prefix, False
        return user + answer_prefix, True

    def count(self, user: str, answer_prefix: str = "", use_chat_template: bool = True) -> int:
        text, special = self.text(user, answer_prefix, use_chat_template)
        return len(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def truncate_middle(self, user: str) -> str:
        """The user turn cut to ``max_prompt_tokens`` tokens by dropping its middle (LongBench's rule)."""
        if self.max_prompt_tokens is None:
            return user
        ids = self.tokenizer(user, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_prompt_tokens:
            return user
        half = self.max_prompt_tokens // 2
        decode = self.tokenizer.decode
        return decode(ids[:half], skip_special_tokens=True) + decode(ids[-half:], skip_special_tokens=True)

    def input_ids(self, sample: EvalSample) -> torch.Tensor:
        """Token ids ``(1, n)`` of a sample, truncated in the middle when longer than allowed."""
        text, special = self.text(self.truncate_middle(sample.user), sample.answer_prefix, sample.use_chat_template)
        ids = self.tokenizer(text, add_special_tokens=special, return_tensors="pt")["input_ids"]
        if ids.shape[-1] == 0:
            raise ValueError(f"sample {sample.sample_id} has an empty prompt")
        return ids.to(torch.long)
