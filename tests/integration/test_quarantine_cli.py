"""``alignd quarantine`` and ``alignd datasets`` on SQLite and PostgreSQL: an operator's quarantine leaves training
sets through the same projection as a monitor's, a lift brings the data back, both are audited decisions the
executor records as applied, a replay reaches the same quarantine, and every mistake is refused with nothing
recorded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from daemon.cli import main
from daemon.enforcement import EnforcementExecutor
from events.audit import AuditTrail, list_records, verify
from events.codec import decode_inbound
from events.model import Event
from events.names import DEMONSTRATIONS, PREFERENCE_PAIRS
from events.projections import ProjectionRunner, QuarantineProjection, projection_digest
from events.read_models import training_examples
from events.sql_store import SqlEventStore

from ..helpers import encode, feedback, interaction

pytestmark = pytest.mark.integration

T1 = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)


@dataclass
class ClockOnly:
    """The executor's governance, for requests that never reach it (quarantines are applied by the projection)."""

    def clock(self) -> datetime:
        return T1


def _seed(store: SqlEventStore) -> None:
    """alice: a preference and a correction on r1; bob: a preference and a top rating on r2; carol: a thumbs-up."""
    inbound = [
        interaction("r1", i=1, user="alice"),
        interaction("r2", i=2, user="bob"),
        interaction("r3", i=3, user="carol", messages=[{"role": "user", "content": "hi"}], prompt=None),
        feedback("r1", "preference", {"chosen": "A1", "rejected": "B1"}, event_id="fb-alice-pref", user="alice"),
        feedback("r1", "correction", {"response": "fixed"}, event_id="fb-alice-fix", user="alice"),
        feedback("r2", "preference", {"chosen": "A2", "rejected": "B2"}, event_id="fb-bob-pref", user="bob"),
        feedback("r2", "rating", 5, event_id="fb-bob-five", user="bob"),
        feedback("r3", "thumbs", "up", event_id="fb-carol-up", user="carol"),
    ]
    store.append([decode_inbound(encode(m), fallback_event_id=f"t:0:{n}") for n, m in enumerate(inbound)])


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _json(args: list[str], capsys: pytest.CaptureFixture[str]) -> Any:
    code, out, err = _cli([*args, "--json"], capsys)
    assert code == 0, err
    return json.loads(out)


def _counts(capsys: pytest.CaptureFixture[str]) -> dict[tuple[str, str], tuple[int, int]]:
    data = _json(["datasets"], capsys)
    return {(c["dataset"], c["source"]): (c["kept"], c["quarantined"]) for c in data["counts"]}


def _training(store: SqlEventStore) -> tuple[list[str], list[str]]:
    upto = store.max_seq()
    pairs = [r["pair_id"] for r in training_examples(store, PREFERENCE_PAIRS, upto)]
    demos = [r["feedback_event_id"] for r in training_examples(store, DEMONSTRATIONS, upto)]
    return pairs, demos


@pytest.fixture
def cli_store(store: SqlEventStore, db_url: str, monkeypatch: pytest.MonkeyPatch) -> SqlEventStore:
    for name in [n for n in __import__("os").environ if n.startswith("ALIGND_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("ALIGND_DATABASE_URL", db_url)
    monkeypatch.setenv("ALIGND_LOG_LEVEL", "WARNING")
    return store


def test_an_operators_quarantine_leaves_training_sets_and_a_lift_brings_the_data_back(
    cli_store: SqlEventStore, capsys: pytest.CaptureFixture[str]
) -> None:
    store = cli_store
    _seed(store)
    runner = ProjectionRunner(store)  # what the daemon's ingest and project roles run
    runner.catch_up()
    everything = (["fb-alice-pref", "fb-alice-fix", "fb-bob-pref"], ["fb-alice-fix", "fb-bob-five"])
    assert _training(store) == everything
    assert _counts(capsys) == {
        ("preference_pairs", "preference"): (2, 0),
        ("preference_pairs", "correction"): (1, 0),
        ("demonstrations", "correction"): (1, 0),
        ("demonstrations", "top_rated"): (1, 0),
        ("prompts", "text"): (2, 0),
        ("prompts", "messages"): (1, 0),
    }

    added = _json(["quarantine", "add", "--user", "alice", "--reason", "paid to vote", "--actor", "ops-ana"], capsys)
    assert added["action"] == "quarantine_user" and added["subjects"] == ["alice"] and added["actor"] == "ops-ana"
    runner.catch_up()
    assert _training(store) == (["fb-bob-pref"], ["fb-bob-five"])
    assert _counts(capsys) == {
        ("preference_pairs", "preference"): (1, 1),
        ("preference_pairs", "correction"): (0, 1),
        ("demonstrations", "correction"): (0, 1),
        ("demonstrations", "top_rated"): (1, 0),
        ("prompts", "text"): (1, 1),
        ("prompts", "messages"): (1, 0),
    }
    [entry] = _json(["quarantine", "list"], capsys)
    assert (entry["kind"], entry["subject"], entry["actor"], entry["reason"]) == (
        "user",
        "alice",
        "ops-ana",
        "paid to vote",
    )
    assert entry["seq"] == added["seq"] and entry["detector"] is None and entry["since"]

    code, out, _ = _cli(
        ["quarantine", "add", "--event", "fb-bob-pref", "--reason", "copied text", "--actor", "ops-ana"], capsys
    )
    assert code == 0 and "event fb-bob-pref: quarantined, by ops-ana: copied text" in out
    runner.catch_up()
    assert _training(store) == ([], ["fb-bob-five"])
    code, out, _ = _cli(["quarantine", "list"], capsys)
    assert out.splitlines()[0].split() == ["KIND", "SUBJECT", "SEQ", "SINCE", "(UTC)", "BY", "REASON"]
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [["user", "alice"], ["event", "fb-bob-pref"]]

    lifted = _json(
        ["quarantine", "remove", "--user", "alice", "--reason", "cleared on review", "--actor", "ops-bo"], capsys
    )
    assert lifted["action"] == "lift_quarantine"
    runner.catch_up()
    assert _training(store) == (["fb-alice-pref", "fb-alice-fix"], ["fb-alice-fix", "fb-bob-five"])
    code, out, _ = _cli(["quarantine", "remove", "--event", "fb-bob-pref", "--reason", "fine after all"], capsys)
    assert code == 0 and "no longer quarantined" in out
    runner.catch_up()
    assert _training(store) == everything
    code, out, _ = _cli(["quarantine", "list"], capsys)
    assert out.startswith("nothing is quarantined")

    # add, remove, add: quarantined again, from the second add
    again = _json(["quarantine", "add", "--user", "alice", "--reason", "flooding again", "--actor", "ops-ana"], capsys)
    runner.catch_up()
    [entry] = _json(["quarantine", "list"], capsys)
    assert entry["seq"] == again["seq"] and entry["reason"] == "flooding again"
    assert _training(store) == (["fb-bob-pref"], ["fb-bob-five"])

    # the same state from nothing
    live = projection_digest(store, QuarantineProjection())
    rows = list(store.table_rows(QuarantineProjection.table))
    runner.replay(["quarantine"])
    assert (
        projection_digest(store, QuarantineProjection()) == live
        and list(store.table_rows(QuarantineProjection.table)) == rows
    )

    # audited decisions: who and why; the executor records each as applied by the projection
    executor = EnforcementExecutor(store, ClockOnly())  # type: ignore[arg-type]
    assert executor.step() == 5
    applied = [s.event.payload for s in store.read(0, types=["enforcement.applied"])]
    assert [(p["action"], p["outcome"], p["detail"]) for p in applied] == [
        ("quarantine_user", "applied", "applied by the quarantine projection"),
        ("quarantine_events", "applied", "applied by the quarantine projection"),
        ("lift_quarantine", "applied", "applied by the quarantine projection"),
        ("lift_quarantine", "applied", "applied by the quarantine projection"),
        ("quarantine_user", "applied", "applied by the quarantine projection"),
    ]
    AuditTrail(store).catch_up()
    assert verify(store).ok
    requested = [r for r in list_records(store, action="enforcement.requested")]
    assert [(r.actor, r.subject, r.reason) for r in requested] == [
        ("ops-ana", "quarantine_user user alice", "paid to vote"),
        ("ops-ana", "quarantine_events 1 events", "copied text"),
        ("ops-bo", "lift_quarantine user alice", "cleared on review"),
        (requested[3].actor, "lift_quarantine 1 events", "fine after all"),
        ("ops-ana", "quarantine_user user alice", "flooding again"),
    ]
    assert requested[3].actor  # the OS user name when --actor is not given
    code, out, _ = _cli(["audit", "list", "--type", "enforcement.requested"], capsys)
    assert code == 0 and "ops-bo" in out and "cleared on review" in out


def test_a_monitors_quarantine_is_lifted_by_the_same_projection(
    cli_store: SqlEventStore, capsys: pytest.CaptureFixture[str]
) -> None:
    store = cli_store
    _seed(store)
    payload = {
        "action": "quarantine_user",
        "target": {"user": "bob"},
        "reason": "bob sent 40% of the feedback",
        "detector": "feedback_flooding",
        "severity": "warning",
        "anomaly_id": "anomaly:1",
        "evidence": ["fb-bob-pref"],
    }
    store.append([Event("enforcement:quarantine_user:1", "enforcement.requested", T1, "alignd.monitors", payload)])
    ProjectionRunner(store).catch_up()
    [entry] = _json(["quarantine", "list"], capsys)
    assert (entry["actor"], entry["detector"]) == ("alignd.monitors", "feedback_flooding")
    code, out, _ = _cli(["quarantine", "list"], capsys)
    assert "alignd.monitors (feedback_flooding)" in out
    assert _json(["quarantine", "remove", "--user", "bob", "--reason", "a real power user"], capsys)["subjects"] == [
        "bob"
    ]
    assert _json(["quarantine", "list"], capsys) == []
    assert _training(store)[0] == ["fb-alice-pref", "fb-alice-fix", "fb-bob-pref"]


def test_mistakes_are_refused_and_nothing_is_recorded(
    cli_store: SqlEventStore, capsys: pytest.CaptureFixture[str]
) -> None:
    store = cli_store
    code, out, _ = _cli(["datasets"], capsys)
    assert code == 0 and out.startswith("the store holds no preference pairs, demonstrations or prompts yet")
    assert "no dataset snapshot yet" in out
    _seed(store)
    assert _json(["quarantine", "add", "--user", "carol", "--reason", "test account"], capsys)["seq"] > 0
    before = store.max_seq()

    refused = [
        (["add", "--reason", "x"], "say what to quarantine: --user USER, or --event ID"),
        (["add", "--user", "bob", "--event", "fb-bob-pref", "--reason", "x"], "give --user or --event, not both"),
        (["add", "--event", "fb-nope", "--reason", "x"], "no event fb-nope in the store"),
        (["add", "--event", "fb-bob-pref", "--event", "fb-nope", "--reason", "x"], "no event fb-nope in the store"),
        (["add", "--user", "bob", "--reason", "   "], "--reason is empty"),
        (["add", "--user", "carol", "--reason", "again"], "already quarantined: user carol since seq"),
        (["remove", "--user", "bob", "--reason", "x"], "user bob is not quarantined"),
        (["remove", "--event", "fb-bob-pref", "--reason", "x"], "event fb-bob-pref is not quarantined"),
        (["remove", "--user", "carol", "--reason", ""], "--reason is empty"),
        (["remove", "--reason", "x"], "say what to lift the quarantine of"),
    ]
    interaction_id = store.read(0, limit=1)[0].event.event_id
    refused.append(
        (
            ["add", "--event", interaction_id, "--reason", "x"],
            "only feedback.received, demonstration.generated and alert.reviewed",
        )
    )
    for args, message in refused:
        code, out, err = _cli(["quarantine", *args], capsys)
        assert (code, out) == (2, ""), args
        assert message in err, (args, err)
    assert store.max_seq() == before  # nothing was recorded

    code, out, _ = _cli(["datasets"], capsys)
    assert code == 0 and out.startswith("no preference pairs, demonstrations or prompts counted yet")
    assert f"the projections have folded the store up to seq 0 of {before}" in out
    ProjectionRunner(store).catch_up()
    code, out, _ = _cli(["datasets"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["DATASET", "SOURCE", "KEPT", "QUARANTINED"]
    table = [line.split() for line in lines[1 : lines.index("")]]
    assert ["demonstrations", "top_rated", "1", "0"] in table and ["prompts", "(all)", "2", "1"] in table
    assert ["prompts", "messages", "0", "1"] in table and ["preference_pairs", "(all)", "3", "0"] in table


def test_the_command_folds_beside_a_daemon_folding_the_same_request(
    cli_store: SqlEventStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daemon's runner folds the request the command must fold, and commits while the command waits on it: on
    PostgreSQL the command's fold is then refused (its rows and position exist), and it folds again from there."""
    import threading

    from events.projections.runner import _fold_units

    store = cli_store
    _seed(store)
    payload = {"action": "quarantine_user", "target": {"user": "bob"}, "reason": "flooding", "evidence": []}
    store.append([Event("enforcement:quarantine_user:2", "enforcement.requested", T1, "alignd.monitors", payload)])
    folding, done = threading.Event(), threading.Event()

    def daemon_fold() -> None:
        with store.unit_of_work(append_lock=False) as uow:
            batch = uow.read(0, types=["enforcement.requested"])
            _fold_units(uow, QuarantineProjection(), batch)
            uow.save_position("quarantine", batch[-1].seq)
            folding.set()
            done.wait(1.5)  # the command starts its own fold meanwhile, and waits on these rows
        done.set()

    daemon = threading.Thread(target=daemon_fold)
    daemon.start()
    assert folding.wait(10)
    try:
        listed = _json(["quarantine", "list"], capsys)
    finally:
        done.set()
        daemon.join(10)
    assert [(e["subject"], e["actor"]) for e in listed] == [("bob", "alignd.monitors")]
