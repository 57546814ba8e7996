"""SPTS configuration: which layers skip, how many tokens each stage keeps, which parts are on.

A config is a frozen value. It is validated on construction (what can be checked without a
model) and again against a model in :func:`spts.enable` (what depends on the layer count).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from spts.checks import check_budget, check_int
from spts.config_file import ConfigFileError, check_made_for, read_config_file, write_config_file

Budget = int | float
"""An int is an absolute token count (as in the paper); a float in (0, 1] a fraction of the prompt."""


@dataclass(frozen=True)
class SPTSConfig:
    """How SPTS skips tokens during prefill.

    Layers ``[0, start_layer)`` run in full. Layers ``[start_layer, num_layers)`` skip tokens and
    are split into stages at ``stage_boundaries``: stage 0 is ``[start_layer, b_0)``, stage i is
    ``[b_{i-1}, b_i)``, and the final stage runs ``[b_last, num_layers)``. ``budgets`` gives one
    budget per stage; when it has one entry fewer than there are stages (as the paper's schedules
    do), the last budget also covers the final stage.

    Attributes:
        start_layer: first skipping layer; at least 1, because layer 0's cache length is what
            transformers uses as the number of tokens seen so far.
        stage_boundaries: strictly increasing layer indices in ``(start_layer, num_layers)``.
        budgets: active tokens per layer in each stage (int: tokens, float in (0, 1]: fraction of
            the prompt length, rounded up).
        delta: delayed-pruning margin: at a boundary, ``budget_next + delta`` candidates survive
            (int: tokens, float in [0, 1]: fraction of the prompt length).
        probe_tokens: how many trailing tokens' queries probe attention (the paper found 1 best).
        pool_kernel: odd window of a max-pool over the probe scores before selection (1 = off, the
            paper). Wider keeps the neighbours of attended tokens too, so a retrieved span stays whole
            in the cache for the tokens decoded after the first (as SnapKV pools its scores).
        skip_attention: PAP on; off runs attention over every candidate.
        skip_ffn: FFN skipping on; off runs the FFN over every candidate.
        prune: MSDP on; off keeps every token a candidate in every skipping layer.
        head_aggregation: how the probe's per-head attention becomes one score per token: ``"mean"`` over
            query heads (the paper) or ``"max"`` (a token one head retrieves keeps its score).
        sink_tokens: the first tokens of the prompt (attention sinks) are always active and never pruned.
        recent_tokens: the last tokens of the prompt (usually the question) are always active and never
            pruned. The last token always is, whatever this says.
        accumulate_scores: select with the probe scores summed over the layers of the stage so far (the
            evidence of several layers) rather than this layer's alone.
        kv_complete: active queries attend over every candidate's keys and values (computed from the candidates'
            current residual, as the probe already computes keys), and all of them are cached, so decoding sees
            every candidate: more attention and memory than the paper's cache of the active tokens.
        cache_skipped: the paper's attention (active queries over the active tokens only), with the skipped
            candidates' keys and values (from their current residual) cached too, so decoding sees every candidate
            of every layer: the paper's prefill logits, kv_complete's decoding cost. Implied by kv_complete.
        local_window: 0 (the paper) leaves the candidates a layer does not select with their state; W > 0 gives
            them an attention update over the W candidates up to themselves and the first ``local_sinks``
            candidates (sliding-window attention with sinks, as StreamingLLM), at ``O(W)`` per token instead of
            the whole prefix. They still skip the FFN unless selected for it, and the cache holds what it holds
            without this. Costs their query, value and output projections.
        local_sinks: how many leading candidates the local window of ``local_window`` always includes.
        full_view_tokens: T > 0: the last T tokens (protected) attend over every prompt token in every skipping layer,
            pruned ones included, from each token's current residual (0: over what the layer keeps, the paper).
        end_layer: layers ``[end_layer, num_layers)`` run in full again, over every token (None: skipping
            runs to the last layer, as in the paper). For studies of where skipping costs accuracy:
            skipping only ``[start_layer, end_layer)`` measures what that layer range loses.
        budget_exponent: how fraction budgets (and a fraction ``delta``) grow with the prompt: a fraction ``f``
            keeps ``ceil(f * R * (L / R) ** budget_exponent)`` tokens of an ``L``-token prompt, ``R`` being
            ``budget_reference``. 1 (the default): ``ceil(f * L)``, a fixed share of any prompt; 0: ``f * R`` tokens
            whatever the length (the paper's absolute budgets); in between, budgets grow slower than the prompt.
            A budget of at least the prompt keeps every token. Int budgets are token counts either way.
        budget_reference: the length ``R`` (tokens) at which a fraction budget keeps exactly its share.
        sparse_from: first layer with block-sparse prefill attention (None: off; docs/sparse.md): per KV group and
            query block of ``sparse_block`` tokens, the key blocks an estimate ranks highest until they hold
            ``sparse_threshold`` of its attention mass (1: all, exact), plus the sink block and the local band.
        sparse_to: sparse layers are ``[sparse_from, sparse_to)`` (None: up to ``start_layer``); beyond
            ``start_layer``, the active tokens' attention in skipping layers is sparse too.
        sparse_min_density: each query block keeps at least this share of its causal blocks.
        sparse_max_density: a layer keeping a larger share runs the model's own dense attention instead.
        sparse_query_tokens: the query blocks of the prompt's last this many tokens (its question) attend densely.
        sparse_per_head: the threshold holds for every query head's own estimated mass, not only their sum.
    """

    start_layer: int
    stage_boundaries: tuple[int, ...]
    budgets: tuple[Budget, ...]
    delta: Budget = 0
    probe_tokens: int = 1
    pool_kernel: int = 1
    skip_attention: bool = True
    skip_ffn: bool = True
    prune: bool = True
    head_aggregation: str = "mean"
    sink_tokens: int = 0
    recent_tokens: int = 0
    accumulate_scores: bool = False
    kv_complete: bool = False
    cache_skipped: bool = False
    local_window: int = 0
    local_sinks: int = 4
    full_view_tokens: int = 0
    end_layer: int | None = None
    name: str = field(default="custom", compare=False)
    budget_exponent: float = 1.0
    budget_reference: int = 4096
    sparse_from: int | None = None
    sparse_to: int | None = None
    sparse_block: int = 128
    sparse_threshold: float = 0.9
    sparse_min_density: float = 0.0
    sparse_max_density: float = 0.5
    sparse_query_tokens: int = 0
    sparse_per_head: bool = False

    def __post_init__(self) -> None:
        # Accept lists from users and YAML/JSON; store tuples so the config stays hashable.
        object.__setattr__(self, "stage_boundaries", tuple(self.stage_boundaries))
        object.__setattr__(self, "budgets", tuple(self.budgets))
        check_int("start_layer", self.start_layer, minimum=1)
        for i, boundary in enumerate(self.stage_boundaries):
            check_int(f"stage_boundaries[{i}]", boundary, minimum=self.start_layer + 1)
        for i, (a, b) in enumerate(zip(self.stage_boundaries, self.stage_boundaries[1:], strict=False)):
            if b <= a:
                raise ValueError(
                    f"stage_boundaries must be strictly increasing: stage_boundaries[{i + 1}]={b} "
                    f"is not greater than stage_boundaries[{i}]={a}"
                )
        n_stages = len(self.stage_boundaries) + 1
        if len(self.budgets) not in (n_stages, n_stages - 1) or not self.budgets:
            raise ValueError(
                f"budgets must have one entry per stage ({n_stages}) or one fewer ({n_stages - 1}, the "
                f"last budget then covers the final stage); got {len(self.budgets)} for "
                f"stage_boundaries={self.stage_boundaries}"
            )
        for i, budget in enumerate(self.budgets):
            check_budget(f"budgets[{i}]", budget, allow_zero=False)
        check_budget("delta", self.delta, allow_zero=True)
        check_int("probe_tokens", self.probe_tokens, minimum=1)
        check_int("pool_kernel", self.pool_kernel, minimum=1)
        if self.pool_kernel % 2 == 0:
            raise ValueError(f"pool_kernel must be odd (centred on each token), got {self.pool_kernel}")
        if self.end_layer is not None:
            check_int("end_layer", self.end_layer, minimum=self.start_layer + 1)
            if self.stage_boundaries and self.stage_boundaries[-1] >= self.end_layer:
                raise ValueError(
                    f"stage_boundaries must lie before end_layer={self.end_layer}; got {self.stage_boundaries}"
                )
        if self.head_aggregation not in ("mean", "max"):
            raise ValueError(f"head_aggregation must be 'mean' or 'max', got {self.head_aggregation!r}")
        check_int("sink_tokens", self.sink_tokens, minimum=0)
        check_int("recent_tokens", self.recent_tokens, minimum=0)
        check_int("local_window", self.local_window, minimum=0)
        check_int("local_sinks", self.local_sinks, minimum=0)
        check_int("full_view_tokens", self.full_view_tokens, minimum=0)
        for flag in ("skip_attention", "skip_ffn", "prune", "accumulate_scores", "kv_complete", "cache_skipped"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be a bool, got {getattr(self, flag)!r}")
        if self.cache_skipped and self.kv_complete:
            raise ValueError("kv_complete already caches every candidate; set cache_skipped only without it")
        exponent = self.budget_exponent
        if isinstance(exponent, bool) or not isinstance(exponent, int | float) or not 0 <= exponent <= 1:
            raise ValueError(f"budget_exponent must be a number in [0, 1], got {exponent!r}")
        check_int("budget_reference", self.budget_reference, minimum=16)
        self._check_sparse()

    def _check_sparse(self) -> None:
        if self.sparse_from is not None:
            check_int("sparse_from", self.sparse_from, minimum=0)
            check_int("sparse_to", self.sparse_start_stop[1], minimum=self.sparse_from + 1)
        check_int("sparse_block", self.sparse_block, minimum=8)
        check_int("sparse_query_tokens", self.sparse_query_tokens, minimum=0)
        if not isinstance(self.sparse_per_head, bool):
            raise ValueError(f"sparse_per_head must be True or False, got {self.sparse_per_head!r}")
        if self.sparse_block % 8:
            raise ValueError(f"sparse_block must be a multiple of 8 (the estimate's stride), got {self.sparse_block}")
        for name in ("sparse_threshold", "sparse_min_density", "sparse_max_density"):
            value, zero_ok = getattr(self, name), name == "sparse_min_density"
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not (number and 0 <= value <= 1 and (value or zero_ok)):
                raise ValueError(f"{name} must be a number in {'[0, 1]' if zero_ok else '(0, 1]'}, got {value!r}")
        beyond = self.sparse_from is not None and self.sparse_start_stop[1] > self.start_layer
        if beyond and (self.kv_complete or self.local_window):
            raise ValueError(
                "sparse attention in skipping layers (sparse_to > start_layer) covers their causal attention among "
                "active tokens; it cannot combine with kv_complete or local_window: lower sparse_to to start_layer"
            )

    # ------------------------------------------------------------------ constructors
    @classmethod
    def preset(cls, name: str) -> SPTSConfig:
        """The paper's schedule for one of its models (see ``PRESETS``)."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None

    @classmethod
    def named(cls, name: str | os.PathLike, model: Any = None) -> SPTSConfig:
        """A preset name, or a config file (a path object, or a string ending in ``.json``: see
        :func:`is_config_file`) checked against ``model`` when given. Every entry point that takes either
        (``spts.enable``, ``--preset``, vLLM settings) resolves names through this rule."""
        if is_config_file(name):
            return cls.from_file(name, model)
        return cls.preset(name)

    @classmethod
    def for_model(cls, model_or_config: Any, reference: str = "qwen2.5-7b") -> SPTSConfig:
        """Derive a config for any supported model from one of the paper's schedules.

        Layer positions keep their relative depth; budgets scale with the model's context window
        (``max_position_embeddings``) relative to the reference model's, since the paper tunes
        absolute budgets per context size. The default reference is Qwen2.5-7B (32K context),
        whose budgets keep more tokens than LLaMA's and so err on the side of accuracy.

        A derived config is a starting point, not a guarantee: small models can do their retrieval
        deeper than the paper's 7-8B models (SmolLM2-135M retrieves in layers 17-23 of 30 and loses a
        6K-token needle when skipping starts at a third of its depth; see docs/tuning.md). Check a
        derived config on your task, or derive from ``reference="smollm2-135m"`` (a later start).
        """
        config = getattr(model_or_config, "config", model_or_config)
        num_layers = _num_layers(config)
        ref = cls.preset(reference)
        ref_layers, ref_context = PRESET_SHAPES[reference]
        context = int(getattr(config, "max_position_embeddings", ref_context) or ref_context)
        scale_layers = num_layers / ref_layers
        start = max(1, round(ref.start_layer * scale_layers))
        boundaries: list[int] = []
        for b in ref.stage_boundaries:
            layer = max(round(b * scale_layers), (boundaries[-1] if boundaries else start) + 1)
            if layer < num_layers:
                boundaries.append(layer)
        scale_tokens = context / ref_context

        def scaled(budget: Budget, minimum: int) -> Budget:
            # Fractions already scale with the prompt; token counts scale with the context window.
            return budget if isinstance(budget, float) else max(minimum, round(budget * scale_tokens))

        budgets = [scaled(b, 16) for b in ref.budgets]
        n_budgets = min(len(budgets), len(boundaries) + 1)
        delta = scaled(ref.delta, 0)
        return cls(
            start_layer=start,
            stage_boundaries=tuple(boundaries),
            budgets=tuple(budgets[:n_budgets]),
            delta=delta,
            probe_tokens=ref.probe_tokens,
            pool_kernel=ref.pool_kernel,
            name=f"{reference}-scaled",
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike, model: Any = None) -> SPTSConfig:
        """Read a config file (``spts tune`` writes them); with ``model``, refuse a file made for another model."""
        fields, made_for = read_config_file(path)
        try:
            config = cls(**fields)
        except (TypeError, ValueError) as error:
            raise ConfigFileError(f"{path} holds an invalid SPTS config: {error}") from None
        check_made_for(path, made_for, model)
        return config

    def to_file(self, path: str | os.PathLike, model: Any = None, metadata: dict[str, Any] | None = None) -> Path:
        """Write this config as JSON; with ``model``, record its family and layer count for checking on load."""
        return write_config_file(self.to_dict(), path, model, metadata)

    def with_(self, **changes: Any) -> SPTSConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ------------------------------------------------------------------ derived values
    @property
    def num_stages(self) -> int:
        return len(self.stage_boundaries) + 1

    def stage_starts(self) -> tuple[int, ...]:
        return (self.start_layer, *self.stage_boundaries)

    def skipping_layers(self, num_layers: int) -> range:
        """The layers that skip tokens in a model of ``num_layers`` layers."""
        return range(self.start_layer, num_layers if self.end_layer is None else self.end_layer)

    @property
    def sparse_start_stop(self) -> tuple[int, int]:
        return (self.sparse_from or 0, self.start_layer if self.sparse_to is None else self.sparse_to)

    def sparse_layers(self, num_layers: int) -> range:
        """The layers whose prefill attention is block-sparse (empty when ``sparse_from`` is None)."""
        start, stop = self.sparse_start_stop
        return range(start, min(num_layers, stop)) if self.sparse_from is not None else range(0)

    def exact_prefix(self) -> int:
        """Layers ``[0, n)`` compute exactly what the unmodified model does (prefix replay may stand in for them)."""
        return self.start_layer if self.sparse_from is None else min(self.start_layer, self.sparse_from)

    def stage_of_layer(self, layer_idx: int) -> int | None:
        """Index of the stage ``layer_idx`` belongs to, or None for a full (non-skipping) layer."""
        if layer_idx < self.start_layer or (self.end_layer is not None and layer_idx >= self.end_layer):
            return None
        return sum(1 for b in self.stage_boundaries if layer_idx >= b)

    def stage_budget(self, stage: int, prompt_length: int) -> int:
        """Active tokens per layer in ``stage`` for a prompt of ``prompt_length`` tokens."""
        budget = self.budgets[min(stage, len(self.budgets) - 1)]
        return max(1, _resolve(budget, self.budget_length(prompt_length)))

    def pruning_keep(self, stage: int, prompt_length: int) -> int:
        """Candidates that survive the boundary that opens ``stage`` (MSDP: next budget + delta)."""
        return self.stage_budget(stage, prompt_length) + _resolve(self.delta, self.budget_length(prompt_length))

    def budget_length(self, prompt_length: int) -> float:
        """The length fraction budgets are shares of: the prompt's own unless ``budget_exponent`` < 1."""
        if self.budget_exponent == 1 or prompt_length == self.budget_reference:
            return prompt_length
        return self.budget_reference * (prompt_length / self.budget_reference) ** self.budget_exponent

    def validate_for(self, num_layers: int) -> None:
        """Check the schedule fits a model with ``num_layers`` decoder layers."""
        if self.start_layer >= num_layers:
            raise ValueError(
                f"start_layer={self.start_layer} must be less than the model's {num_layers} layers "
                f"(allowed: 1..{num_layers - 1})"
            )
        for i, boundary in enumerate(self.stage_boundaries):
            if boundary >= num_layers:
                raise ValueError(
                    f"stage_boundaries[{i}]={boundary} must be less than the model's {num_layers} layers "
                    f"(allowed: {self.start_layer + 1}..{num_layers - 1})"
                )
        if self.sparse_to is not None and self.sparse_to > num_layers:
            raise ValueError(f"sparse_to={self.sparse_to} must be at most the model's {num_layers} layers")
        if self.end_layer is not None and self.end_layer > num_layers:
            raise ValueError(f"end_layer={self.end_layer} must be at most the model's {num_layers} layers")


def _resolve(budget: Budget, prompt_length: float) -> int:
    return math.ceil(budget * prompt_length) if isinstance(budget, float) else budget


def _num_layers(config: Any) -> int:
    num_layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(num_layers, int):
        raise ValueError(f"cannot read num_hidden_layers from {type(config).__name__}; pass a model or its config")
    return num_layers


PRESETS: dict[str, SPTSConfig] = {
    "llama-3.1-8b": SPTSConfig(
        start_layer=10,
        stage_boundaries=(13, 18, 23, 28),
        budgets=(9 * 1024, 7 * 1024, 4 * 1024, 2 * 1024),
        delta=1024,
        name="llama-3.1-8b",
    ),
    "qwen2.5-7b": SPTSConfig(
        start_layer=9,
        stage_boundaries=(12, 16, 20, 24),
        budgets=(13 * 1024, 10 * 1024, 7 * 1024, 4 * 1024),
        delta=2048,
        name="qwen2.5-7b",
    ),
    "openpangu-1b": SPTSConfig(
        start_layer=11,
        stage_boundaries=(13, 16, 19, 22),
        budgets=(13 * 1024, 10 * 1024, 7 * 1024, 4 * 1024),
        delta=2048,
        name="openpangu-1b",
    ),
    # Tuned here, not in the paper (docs/tuning.md): SmolLM2 retrieves in layers 17-23, so skipping
    # starts there; budgets are fractions because its 8K context makes prompts short; pooling keeps
    # multi-token answers whole in the cache.
    "smollm2-135m": SPTSConfig(
        start_layer=17,
        stage_boundaries=(20, 23, 26),
        budgets=(0.3, 0.2, 0.1, 0.05),
        delta=0.03,
        pool_kernel=13,
        name="smollm2-135m",
    ),
}
"""The paper's schedules (SPEC.md; absolute token budgets) and schedules tuned for the zoo's models."""

PRESET_SHAPES: dict[str, tuple[int, int]] = {
    "llama-3.1-8b": (32, 131072),
    "qwen2.5-7b": (28, 32768),
    "openpangu-1b": (26, 32768),
    "smollm2-135m": (30, 8192),
}
"""(layers, context window) of each preset's model, used to scale presets to other models."""


def is_config_file(name: str | os.PathLike) -> bool:
    """Whether a name that may also be a preset names a config file: a path object or a ``.json`` path."""
    return isinstance(name, os.PathLike) or str(name).endswith(".json")
