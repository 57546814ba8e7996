"""Issue 16's peers at matched TTFT: from an ``spts bench`` folder that timed a grid of peer settings beside the
SPTS schedules, pick per peer family the setting whose measured TTFT speedup is closest to each schedule's.

    spts bench ... --methods full,tuned=t.json,fastkv@0.1,fastkv@0.2,lazyllm@1,lazyllm@1.5 --out B
    python benchmarks/match_speed.py B --to tuned          # prints e.g. fastkv@0.2,lazyllm@1.5

Prints the matched methods comma-separated on stdout (what ``spts eval --methods`` takes) and, on stderr, how
far each is from the speed it matches, so a grid too coarse to match is seen, not hidden.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spts.methods.peers.spec import parse_peer_spec


def match(rows: list[dict], references: list[str]) -> list[tuple[str, str, float, float]]:
    """(reference, peer, reference speedup, peer speedup): per reference, per peer family, the setting closest
    in speed."""
    speed = {r["method"]: r["speedup"] for r in rows}
    missing = [name for name in references if name not in speed]
    if missing:
        raise SystemExit(f"the bench timed no {', '.join(missing)}; it timed {', '.join(speed)}")
    families: dict[str, list[str]] = {}
    for name in speed:
        peer = parse_peer_spec(name)
        if peer is not None:
            families.setdefault(peer.kind, []).append(name)
    if not families:
        raise SystemExit(f"the bench timed no peer method (gemfilter, fastkv, lazyllm); it timed {', '.join(speed)}")
    return [
        (reference, best, speed[reference], speed[best])
        for reference in references
        for best in (min(names, key=lambda n: abs(speed[n] - speed[reference])) for names in families.values())
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_dir", type=Path, help="an spts bench folder (its summary.json)")
    parser.add_argument("--to", action="append", required=True, help="a method the bench timed, e.g. tuned")
    parser.add_argument("--length", help="prompt length to match at (default: the bench's only one)")
    args = parser.parse_args()
    summary = args.bench_dir / "summary.json"
    if not summary.is_file():
        raise SystemExit(f"{args.bench_dir} has no summary.json (run spts bench there first)")
    rows = json.loads(summary.read_text())["rows"]
    lengths = sorted({str(r["length"]) for r in rows})
    length = args.length or (lengths[0] if len(lengths) == 1 else None)
    if length not in lengths:
        raise SystemExit(f"{args.bench_dir} holds lengths {', '.join(lengths)}; pick one with --length")
    matches = match([r for r in rows if str(r["length"]) == length], args.to)
    for reference, peer, target, got in matches:
        print(f"{peer}: {got:.2f}x, matching {reference} at {target:.2f}x", file=sys.stderr)
    print(",".join(dict.fromkeys(peer for _, peer, _, _ in matches)))


if __name__ == "__main__":
    main()
