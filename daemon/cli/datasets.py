"""``alignd datasets``: what the training data holds (docs/feedback-contracts.md, docs/operations.md#quarantine).

Preference pairs, demonstrations and prompts by source and quarantine state (kept: what training reads;
quarantined: left out), and the last snapshot of each kind. The counts come from the projections
(events.dataset_stats); when they have not folded the whole store yet, a line says how far they have.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from daemon.cli.command import AddCommand, with_app
from daemon.cli.output import columns, print_json

if TYPE_CHECKING:
    from daemon.bootstrap import App


def add_datasets_commands(commands: Any, add: AddCommand) -> None:
    add(
        commands,
        "datasets",
        cmd_datasets,
        "preference pairs, demonstrations, prompts and reviewers' verdicts by source and quarantine state; the last "
        "snapshots",
    )


@with_app
def cmd_datasets(app: App, args: argparse.Namespace) -> int:
    from events.dataset_stats import dataset_stats

    stats = dataset_stats(app.store)
    if args.json:
        print_json(
            {
                "counts": [
                    {"dataset": c.dataset, "source": c.source, "kept": c.kept, "quarantined": c.quarantined}
                    for c in stats.counts
                ],
                "snapshots": [
                    {
                        "kind": s.kind,
                        "name": s.name,
                        "rows": s.rows,
                        "from_seq": s.from_seq,
                        "to_seq": s.to_seq,
                        "sha256": s.sha256,
                        "event_id": s.event_id,
                        "occurred_at": s.occurred_at.isoformat(),
                    }
                    for s in stats.snapshots
                ],
                "folded_upto": stats.folded_upto,
                "store_seq": stats.store_seq,
            }
        )
        return 0
    upto = min(stats.folded_upto.values(), default=stats.store_seq)
    behind = (
        f"the projections have folded the store up to seq {upto} of {stats.store_seq}: the daemon's ingest or "
        "project role folds the rest, `alignd replay` rebuilds them now"
    )
    if stats.empty and upto < stats.store_seq:
        print(f"no preference pairs, demonstrations or prompts counted yet: {behind}")
    elif stats.empty:
        print(
            "the store holds no preference pairs, demonstrations or prompts yet: they are folded from "
            "interaction.logged and feedback.received events (`alignd ingest`, docs/feedback-contracts.md)"
        )
    else:
        rows = [(c.dataset, c.source, c.kept, c.quarantined) for c in stats.counts]
        for dataset in dict.fromkeys(c.dataset for c in stats.counts):
            mine = [c for c in stats.counts if c.dataset == dataset]
            if len(mine) > 1:
                rows.append((dataset, "(all)", sum(c.kept for c in mine), sum(c.quarantined for c in mine)))
        rows.sort(key=lambda r: (str(r[0]), r[1] == "(all)"))
        columns(["dataset", "source", "kept", "quarantined"], rows)
    if upto < stats.store_seq and not stats.empty:
        print(f"\ncounted up to seq {upto}; {behind}")
    print()
    columns(
        ["kind", "last snapshot", "rows", "seq", "when (UTC)"],
        [
            (
                s.kind,
                s.name,
                s.rows,
                f"{s.from_seq}..{s.to_seq}",
                s.occurred_at.strftime("%Y-%m-%d %H:%M"),
            )
            for s in stats.snapshots
        ],
        none="no dataset snapshot yet: training takes one (`alignd train`)",
    )
    return 0
