"""Command line, one command per job:

* ``spts demo``: a long needle-in-a-haystack prompt on a real zoo model, SPTS off and on, side by side.
* ``spts calibrate``: build LTP proxies (low-rank FFN predictors) for a model and report their fidelity.
* ``spts bench``: TTFT, end-to-end latency and decode speed of the full model vs SPTS, its ablations and peers.
* ``spts eval``: accuracy of the full model vs SPTS configs and ablations on long-context tasks (RULER-style
  synthetic tasks, QA, or LongBench files).
* ``spts tune``: search an SPTS schedule for one model on this machine, for a speedup or a fidelity target;
  writes ``tuned.json`` for ``spts.enable(model, "tuned.json")``.

``spts COMMAND --help`` lists each command's options.
"""

from __future__ import annotations

import typer

from spts.cli.bench import bench
from spts.cli.calibrate import calibrate
from spts.cli.demo import demo
from spts.cli.eval import eval_command
from spts.cli.tune import tune_command

app = typer.Typer(help="Self-predictive token skipping for long-context transformers inference.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """spts: fast long-context prefill by skipping tokens in deep layers."""


app.command()(demo)
app.command()(calibrate)
app.command()(bench)
app.command("eval")(eval_command)
app.command("tune")(tune_command)
