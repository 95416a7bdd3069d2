"""``alignd jobs list|drill``: the training schedule as the leader stored it, who leads, the pause, and the history.

The schedule is read from APScheduler's job table (``apscheduler_jobs``), which only the replica holding the
leader lease writes; before any replica has led, the configured jobs are shown with the next run times their
triggers would give. The volume section says, per kind, how many examples arrived since the last successful
training and whether the next check would train (and why not, when it would not).

``alignd jobs drill`` runs the scheduler itself, as ``alignd run --role schedule`` does, with jobs that train
nothing: start it on two machines (or twice on one) against one database to watch one lead, the other stand by,
and take over on SIGKILL or SIGTERM (tests/reliability/test_scheduler_failover.py does exactly that).
"""

from __future__ import annotations

import argparse
import logging
import pickle
import signal
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from daemon import configs
from daemon.cli.command import AddCommand, group, with_app
from daemon.cli.output import columns, print_json
from daemon.leader import read_lease
from daemon.scheduler import (
    JOBSTORE_TABLE,
    ScheduleConfig,
    dry_run_job,
    planned_jobs,
)
from daemon.training_rules import (
    baseline_seq,
    count_new_examples,
    decide_training,
    history,
    pause_blocks,
    read_attempts,
)
from events.jobstore import stored_jobs as stored_job_rows
from events.names import DATASETS

logger = logging.getLogger(__name__)

#: Printed under a listing's headers when it has no rows.
NONE = "(none)"

if TYPE_CHECKING:
    from daemon.bootstrap import App
    from events.sql_store import SqlEventStore


def add_jobs_commands(commands: Any, add: AddCommand) -> None:
    """Add ``jobs list`` to the top-level subparsers."""
    jobs = group(commands, "jobs", "scheduled training jobs")
    p = add(jobs, "list", cmd_jobs_list, "the schedule, the leader, whether training is paused, and past attempts")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="how many past attempts to show (default 20)")
    p = add(
        jobs,
        "drill",
        cmd_jobs_drill,
        "contend for the leader lease and schedule as `alignd run --role schedule` does, with jobs that only log "
        "what they would train (a failover drill; SIGTERM stops it)",
        json_flag=False,
    )
    p.add_argument("--holder", help="this replica's lease holder id (default: host:pid:random)")
    p.add_argument("--lease", type=float, metavar="SECONDS", help="overrides schedule.lease_s")
    p.add_argument("--check-interval", type=float, metavar="SECONDS", help="overrides schedule.check_interval_s")
    p.add_argument("--reward-after-pairs", type=int, metavar="N", help="overrides schedule.reward_after_pairs")
    p.add_argument("--policy-after-examples", type=int, metavar="N", help="overrides schedule.policy_after_examples")
    p.add_argument("--job-seconds", type=float, default=0.0, metavar="SECONDS", help="how long each job holds")


def stored_jobs(store: SqlEventStore, config: ScheduleConfig) -> tuple[list[dict[str, Any]], bool]:
    """(jobs with their trigger and next run time, whether they come from the job store)."""
    from apscheduler.util import utc_timestamp_to_datetime

    rows = stored_job_rows(store, JOBSTORE_TABLE)
    if rows:  # None: no job table yet; []: an empty one
        jobs = []
        for row in rows:
            # Written by our own scheduler in our own database: the same trust APScheduler gives it.
            state = pickle.loads(row.job_state)
            nxt = utc_timestamp_to_datetime(row.next_run_time)
            jobs.append({"id": row.id, "trigger": trigger_text(state["trigger"]), "next_run_time": _iso(nxt)})
        return jobs, True
    now = datetime.now(UTC)
    planned = planned_jobs(config)
    return [
        {"id": job_id, "trigger": trigger_text(trigger), "next_run_time": _iso(trigger.get_next_fire_time(None, now))}
        for job_id, trigger in planned
    ], False


def trigger_text(trigger: Any) -> str:
    """A cron trigger as its crontab line (``0 3 * * *``), with its time zone when not UTC; any other as APScheduler
    writes it. A cron trigger that a crontab line cannot say (seconds, years, weeks) is APScheduler's text too."""
    from apscheduler.triggers.cron import CronTrigger

    if not isinstance(trigger, CronTrigger):
        return str(trigger)
    fields = {f.name: str(f) for f in trigger.fields}
    if fields.get("second") != "0" or fields.get("year") != "*" or fields.get("week") != "*":
        return str(trigger)
    line = " ".join(fields[name] for name in ("minute", "hour", "day", "month", "day_of_week"))
    zone = str(trigger.timezone)
    return line if zone in ("UTC", "Etc/UTC") else f"{line} ({zone})"


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat(timespec="seconds") if moment else None


def volume_status(
    store: SqlEventStore, config: ScheduleConfig, paused: tuple[bool, str | None] = (False, None)
) -> list[dict[str, Any]]:
    """Per kind: examples since the last successful training, the threshold, and what a check would do."""
    attempts = read_attempts(store)
    now = datetime.now(UTC)
    rows = []
    thresholds = (
        ("reward", config.reward_after_pairs),
        ("policy", config.policy_after_examples),
        ("detector", config.detector_after_verdicts),
    )
    for kind, threshold in thresholds:
        objective = config.policy_objective if kind == "policy" else None
        dataset = DATASETS[objective or kind]
        since = baseline_seq(attempts, kind)
        new = count_new_examples(store, dataset, since)
        decision = decide_training(
            kind,
            attempts,
            new,
            threshold,
            now,
            objective=objective,
            failure_backoff_s=config.failure_backoff_s,
            orphan_after_s=config.orphan_after_s,
        )
        blocked = pause_blocks(kind, paused)
        rows.append(
            {
                "kind": kind,
                "dataset": dataset,
                "since_seq": since,
                "new_examples": new,
                "threshold": threshold,
                "next_check": "paused" if blocked else "train" if decision.run else "wait",
                "why": blocked or decision.reason,
            }
        )
    return rows


@with_app
def cmd_jobs_list(app: App, args: argparse.Namespace) -> int:
    from daemon.enforcement import training_paused

    config = ScheduleConfig.from_settings(app.settings)
    store = app.store
    jobs, from_store = stored_jobs(store, config)
    lease = read_lease(store, config.lease_name)
    paused, pause_reason = training_paused(store)
    volume = volume_status(store, config, (paused, pause_reason))
    past = history(store, args.limit)
    leader = (
        {
            "holder": lease.holder,
            "until": _iso(lease.expires_at),
            "since": _iso(lease.acquired_at),
            "fencing_token": lease.fencing_token,
            "expired": lease.expired,
        }
        if lease
        else None
    )
    if args.json:
        print_json(
            {
                "schedule": jobs,
                "schedule_stored": from_store,
                "leader": leader,
                "paused": {"paused": paused, "reason": pause_reason},
                "volume": volume,
                "history": past,
            }
        )
        return 0
    if leader is None:
        print("leader: none yet (no replica has run the scheduler)")
    elif leader["expired"]:
        print(f"leader: none (last {leader['holder']}, lease expired {leader['until']})")
    else:
        print(
            f"leader: {leader['holder']} until {leader['until']} (since {leader['since']}, term {leader['fencing_token']})"
        )
    print(
        f"training: paused ({pause_reason or 'by enforcement'}); apply resume_training to resume"
        if paused
        else "training: not paused"
    )
    print()
    print("schedule" + ("" if from_store else " (configured; no replica has stored it yet)"))
    listed = [(j["id"], j["trigger"], j["next_run_time"] or "paused") for j in jobs]
    columns(["job", "trigger", "next run"], listed, none="(no jobs: every schedule in trainers.schedule is off)")
    print()
    print("volume triggers")
    columns(
        ["kind", "dataset", "since seq", "new", "threshold", "next check"],
        [
            (
                v["kind"],
                v["dataset"],
                v["since_seq"],
                v["new_examples"],
                v["threshold"] or "off",
                f"{v['next_check']}: {v['why']}",
            )
            for v in volume
        ],
        none="(no volume triggers: none is set in trainers.volume)",
    )
    print()
    print(f"history (last {args.limit} attempts, newest first)")
    columns(
        ["started", "kind", "objective", "outcome", "version", "to seq", "reason"],
        [
            (h["started_at"], h["kind"], h["objective"], h["outcome"], h["version"], h["to_seq"], h["reason"])
            for h in past
        ],
        none="(no training attempts yet)",
    )
    return 0


@with_app
def cmd_jobs_drill(app: App, args: argparse.Namespace) -> int:
    """The training scheduler under its lease, each job a dry run; exit 1 when a job outlived the stop."""
    overrides = {
        "lease_s": args.lease,
        "check_interval_s": args.check_interval,
        "reward_after_pairs": args.reward_after_pairs,
        "policy_after_examples": args.policy_after_examples,
    }
    config = configs.schedule_config(app.settings, **{k: v for k, v in overrides.items() if v is not None})
    scheduler = app.training_scheduler(lambda _request, _cancel: None, config=config, holder=args.holder)
    scheduler.run_job = dry_run_job(args.job_seconds, scheduler.lease.holder)
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        logger.info("received %s; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        scheduler.run(stop)
    finally:
        scheduler.close()
    logger.info("stopped %s", "cleanly" if scheduler.clean else "with a job still running")
    return 0 if scheduler.clean else 1
