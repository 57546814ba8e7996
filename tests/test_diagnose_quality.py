"""benchmarks/diagnose_quality.py: choosing which samples to diagnose."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import typer

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "diagnose_quality.py"


@pytest.fixture(scope="module")
def diagnose():
    spec = importlib.util.spec_from_file_location("diagnose_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_indices_keep_their_order(diagnose) -> None:
    assert diagnose.parse_indices("7,2, 3") == [7, 2, 3]
    assert diagnose._index_text([0, 1, 2]) == "0-2"
    assert diagnose._index_text([7, 2]) == "7,2"


@pytest.mark.parametrize("spec", ["a,b", "1,1", "-1", ",", "2.5"])
def test_bad_indices_are_refused(diagnose, spec: str) -> None:
    with pytest.raises(typer.BadParameter, match="--indices"):
        diagnose.parse_indices(spec)
