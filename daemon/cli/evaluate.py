"""``alignd models evaluate``: the continuous evaluation of the champions, now (trainers/champion_eval.py).

The scheduled ``evaluate`` job (``schedule.evaluation_cron``) runs the same thing. Results are ``gate.evaluated``
events with ``"phase": "continuous"`` and ``alignd.eval.*`` tags on each version; the ``champion_regression``
detector compares them with what the version measured at training.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from daemon import configs
from daemon.cli.command import AddCommand, with_app
from daemon.cli.output import note, print_json
from events.names import EVALUATED_KINDS, MODEL_NAMES

if TYPE_CHECKING:
    from daemon.bootstrap import App


def add_evaluate_command(models: Any, add: AddCommand) -> None:
    p = add(
        models,
        "evaluate",
        cmd_models_evaluate,
        "re-run the safety suite and the held-out reward accuracy on the current champions, and record the results",
    )
    p.add_argument("--kind", choices=EVALUATED_KINDS, help="only this model's champion (default: both)")
    p.add_argument("--upto-seq", type=int, metavar="N", help="snapshot the pairs up to this seq (default: all folded)")
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="overrides trainers.timeout_s")


@with_app
def cmd_models_evaluate(app: App, args: argparse.Namespace) -> int:
    from events.projections import ProjectionRunner

    kinds = [args.kind] if args.kind else list(EVALUATED_KINDS)
    limits = configs.job_limits(app.settings, timeout_s=args.timeout)
    # The held-out pairs come from the projections: fold whatever ingestion appended since they last ran.
    ProjectionRunner(app.store).catch_up()
    evaluation = app.champion_evaluation
    # On stderr, so that --json output stays parseable; the job's own log lines follow there too.
    note(f"evaluating the champion of {' and '.join(MODEL_NAMES[k] for k in kinds)} (in a child process)...")
    outcome = evaluation.run(limits, kinds=kinds, upto_seq=args.upto_seq)
    summary = {
        "ok": outcome.ok,
        "reason": outcome.reason,
        "dataset": outcome.snapshot,
        "results": outcome.results,
        "skipped": outcome.skipped,
    }
    if args.json:
        print_json(summary)
    else:
        for row in outcome.results:
            print(_result_line(row))
        for skipped in outcome.skipped:
            print(f"{MODEL_NAMES[skipped['kind']]}: skipped: {skipped['reason']}")
    if not outcome.ok:
        print(
            f"alignd: the evaluation failed: {outcome.reason}; nothing was recorded. Fix the cause and run "
            "`alignd models evaluate` again (a timeout: raise --timeout or trainers.timeout_s).",
            file=sys.stderr,
        )
        return 1
    if not outcome.results:
        print(
            "alignd: nothing was evaluated: "
            + "; ".join(s["reason"] for s in outcome.skipped)
            + ". `alignd models list` shows the versions and their aliases.",
            file=sys.stderr,
        )
        return 1
    return 0


def _result_line(row: dict[str, Any]) -> str:
    metrics = row["metrics"]
    if row["kind"] == "reward":
        measured = (
            f"held-out accuracy {metrics.get('accuracy', float('nan')):.4f}, margin {metrics.get('margin', float('nan')):.4f} "
            f"on {int(metrics.get('pairs', 0))} pairs"
        )
    else:
        measured = (
            f"unsafe rate {metrics.get('unsafe_rate', float('nan')):.4f} on "
            f"{int(metrics.get('red_team_prompts', 0))} red-team prompts"
        )
        if "helpfulness" in metrics:
            measured += f", helpfulness {metrics['helpfulness']:.4f} (mean champion reward)"
    when = "recorded as" if row["appended"] else "already recorded on this snapshot as"
    return (
        f"{row['name']} version {row['version']}: {measured} up to seq {row['dataset_to_seq']}; gates {row['gates']}; "
        f"{when} {row['event_id']}"
    )
