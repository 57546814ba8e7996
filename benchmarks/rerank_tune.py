"""Re-rank a finished ``spts tune`` folder's configs under other objectives, from its stored trials (no model run).

    python benchmarks/rerank_tune.py benchmarks/results/tune_qwen2.5-coder-0.5b_4k8k --objectives blend,answered

For each rung (the configs scored on the same first k prompts), each config's quality under each objective
(:mod:`spts.tuning.quality`) and its rank, as the search would have ranked that rung for a speedup target. It says
which of the configs a rung held another objective prefers; not what a whole search under it would have chosen
(earlier rungs would have cut other configs, and ``answered`` draws other prompts): for that, run the tune.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

from spts.tuning.quality import ANSWERED_MIN, OBJECTIVES, needs_score
from spts.tuning.search import Target, TrialStore, ranking


def rerank(folder: Path, objectives: list[str], answered_min: float, rungs: int) -> str:
    summary = json.loads((folder / "summary.json").read_text())
    store = TrialStore(folder)
    prompts = [
        SimpleNamespace(prompt_id=p["prompt_id"], family=p["family"], target_length=int(p["prompt_id"].split("/")[1]))
        for p in summary["prompts"]
    ]
    described = {c["fingerprint"]: c for c in summary["configs"]}
    same_speed = dict.fromkeys(described, 1.0)  # the search's ranking with speed left out of its tie-breaks
    lines = [f"# Re-ranked: `{folder}`", "", f"Chosen by the run ({summary['objective']}): `{summary['chosen']}`.", ""]
    for rung in summary["rungs"][-rungs:]:
        k = rung["prompts"]
        seen = prompts[:k]
        members = [fp for fp, c in described.items() if c["prompts"] >= k]
        lines += [f"## Rung of {k} prompts ({len(members)} configs)", ""]
        header = "| fingerprint | config | " + " | ".join(f"{o}: quality (rank)" for o in objectives) + " |"
        lines += [header, "|---|---|" + "---|" * len(objectives)]
        table: dict[str, list[str]] = {fp: [] for fp in members}
        for objective in objectives:
            graded = [
                fp for fp in members if all(store.complete(fp, p.prompt_id, needs_score(objective)) for p in seen)
            ]
            aggregates = {fp: store.aggregate(fp, seen, objective, answered_min) for fp in graded}
            key = ranking(Target("speedup", 1.0, objective), same_speed)
            order = [a.fingerprint for a in sorted(aggregates.values(), key=key)]
            for fp in members:
                cell = "-" if fp not in aggregates else f"{aggregates[fp].quality:.3f} ({order.index(fp) + 1})"
                table[fp].append(cell)
        for fp in members:
            lines.append(f"| `{fp}` | {described[fp]['description']} | " + " | ".join(table[fp]) + " |")
        lines.append("")
    lines.append(
        "Ranks as for a speedup target (quality, then fidelity, then the log-probability gap); speed, which breaks "
        "the remaining ties in the search, is left out. `answered`: prompts with a full-model score >= "
        f"{answered_min:g}."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument(
        "--objectives", default="blend,score,answered", help="comma-separated, of " + ", ".join(OBJECTIVES)
    )
    parser.add_argument("--answered-min", type=float, default=ANSWERED_MIN)
    parser.add_argument("--rungs", type=int, default=2, help="the last this many rungs")
    parser.add_argument("--out", type=Path, help="write the table here (else print it)")
    args = parser.parse_args()
    objectives = args.objectives.split(",")
    unknown = [o for o in objectives if o not in OBJECTIVES]
    if unknown:
        parser.error(f"unknown objectives {unknown}; known: {', '.join(OBJECTIVES)}")
    if not 0.0 < args.answered_min <= 1.0:
        parser.error(f"--answered-min must be in (0, 1], got {args.answered_min}")
    if not (args.folder / "summary.json").is_file():
        parser.error(f"{args.folder} holds no summary.json: rerank a finished spts tune folder")
    text = rerank(args.folder, objectives, args.answered_min, args.rungs)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
