"""The audit chain on SQLite and PostgreSQL: built from decision events only, never rebuilt, and every kind of
change made directly in the database is found by ``verify``, which names the first record that does not match.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, delete, insert, select, update

from daemon.cli.audit import EXPORT_COLUMNS, AuditRecordNotFoundError, add_audit_commands
from daemon.settings import DatabaseSettings, Settings
from events.audit import (
    CHECKPOINT,
    GENESIS,
    HASHED,
    AuditRecord,
    AuditTrail,
    audit_fields,
    get_record,
    list_records,
    record_hash,
    verify,
    verify_records,
)
from events.codec import canonical_json, format_timestamp
from events.model import Event
from events.projections import ProjectionRunner
from events.sql_store import SqlEventStore, row_to_event
from events.tables import audit_records, events, projection_checkpoints
from tests.unit.test_audit_hash import T0, decision_events, interaction_event

pytestmark = pytest.mark.integration

DECISIONS = len(decision_events())


def _history() -> list[Event]:
    """Decisions with inbound traffic between them (which is never audited)."""
    mixed: list[Event] = []
    for i, decided in enumerate(decision_events()):
        mixed += [interaction_event(100 + i), decided]
    return [*mixed, interaction_event(999)]


@pytest.fixture
def chained(store: SqlEventStore) -> list[AuditRecord]:
    store.append(_history())
    assert AuditTrail(store).catch_up() == DECISIONS
    return list_records(store, limit=None)


def _records(store: SqlEventStore) -> list[AuditRecord]:
    return list_records(store, limit=None)


def test_decisions_are_chained_once_in_seq_order_and_verify(store: SqlEventStore, chained: list[AuditRecord]) -> None:
    assert [r.position for r in chained] == list(range(1, DECISIONS + 1))
    assert [r.event_id for r in chained] == [e.event_id for e in decision_events()]
    assert chained[0].prev_hash == GENESIS
    assert all(b.prev_hash == a.hash for a, b in zip(chained, chained[1:], strict=False))
    assert AuditTrail(store).catch_up() == 0  # nothing new: nothing appended twice
    assert _records(store) == chained
    report = verify(store)
    assert (report.ok, report.records, report.first_bad, report.pending) == (True, DECISIONS, None, 0)
    assert report.last_hash == chained[-1].hash

    # New decisions wait for the next catch-up; verify counts them and writes nothing.
    store.append([interaction_event(1000), *decision_events(start=500)[:2]])
    report = verify(store)
    assert (report.ok, report.records, report.pending) == (True, DECISIONS, 2)
    assert len(_records(store)) == DECISIONS
    assert AuditTrail(store).catch_up() == 2
    assert verify(store).ok and verify(store).records == DECISIONS + 2


def test_replay_of_the_projections_leaves_the_chain_alone(store: SqlEventStore, chained: list[AuditRecord]) -> None:
    with store.engine.connect() as conn:
        checkpoint = conn.execute(
            select(projection_checkpoints).where(projection_checkpoints.c.name == CHECKPOINT)
        ).one()
    ProjectionRunner(store).replay()
    with store.engine.connect() as conn:
        assert (
            conn.execute(select(projection_checkpoints).where(projection_checkpoints.c.name == CHECKPOINT)).one()
            == checkpoint
        )
    assert _records(store) == chained and verify(store).ok


def test_filters_and_lookups(store: SqlEventStore, chained: list[AuditRecord]) -> None:
    def actions(**query: Any) -> list[str]:
        return [r.action for r in list_records(store, limit=None, **query)]

    assert actions(actor="alice") == ["model.promoted"]
    assert actions(actor="alignd.enforcement") == ["enforcement.applied"]
    assert actions(action="anomaly.detected") == ["anomaly.detected"] * 2
    assert set(actions(model="alignd-policy:4")) == {"gate.evaluated", "model.registered", "model.promoted"}
    assert "training.started" in actions(model="alignd-policy") and "model.rolled_back" in actions(
        model="alignd-policy"
    )
    assert actions(model="assistant:2") == ["anomaly.detected", "enforcement.requested", "demonstration.generated"]
    assert actions(model="alignd") == []  # a name is matched whole, never as a prefix of another name
    window = actions(since=T0 + timedelta(minutes=5), until=T0 + timedelta(minutes=7))
    assert window == ["gate.evaluated", "model.registered"]
    page = list_records(store, limit=3, after_position=4)
    assert [r.position for r in page] == [5, 6, 7]
    assert get_record(store, 5) == get_record(store, "5") == chained[4]
    assert get_record(store, chained[9].event_id) == chained[9]
    assert get_record(store, "no-such-event") is None and get_record(store, 10_000) is None


# --- tampering: each is a change someone with write access to the database could make --------------------

Tamper = Callable[[Connection, list[AuditRecord], SqlEventStore], None]


def _set(conn: Connection, at: int, **values: Any) -> None:
    conn.execute(update(audit_records).where(audit_records.c.position == at).values(**values))


def _move(conn: Connection, old: int, new: int) -> None:
    _set(conn, old, position=new)


def _rechain(conn: Connection, rows: list[dict[str, Any]], prev: str) -> None:
    """What a careful forger does after a change: recompute every hash from there on."""
    for row in rows:
        fields = {k: row[k] for k in HASHED}
        row.update(prev_hash=prev, hash=record_hash(prev, fields))
        prev = row["hash"]


def update_reason(conn: Connection, records: list[AuditRecord], store: SqlEventStore) -> None:
    _set(conn, 5, reason="routine promotion")


def update_evidence(conn: Connection, records: list[AuditRecord], store: SqlEventStore) -> None:
    evidence = json.loads(records[6].evidence) | {"reason": "nothing happened"}
    _set(conn, 7, evidence=canonical_json(evidence))


def update_actor_and_its_hash(conn: Connection, records: list[AuditRecord], store: SqlEventStore) -> None:
    forged = records[12].fields() | {"actor": "bob"}
    _set(conn, 13, actor="bob", hash=record_hash(records[12].prev_hash, forged))


def delete_a_middle_record(conn: Connection, records: list[AuditRecord], store: SqlEventStore) -> None:
    conn.execute(delete(audit_records).where(audit_records.c.position == 8))


def delete_and_renumber_and_rehash(conn: Connection, records: list[AuditRecord], store: SqlEventStore) -> None:
    rows = [r.to_dict() for r in records[8:]]
    conn.execute(delete(audit_records).where(audit_records.c.position >= 8))
    for row in rows:
        row["position"] -= 1
    _rechain(conn, rows, records[6].hash)
    conn.execute(insert(audit_records), rows)


def delete_the_last_record(conn: Connection, records: list[AuditRecord], store: SqlEventStore) -> None:
    conn.execute(delete(audit_records).where(audit_records.c.position == len(records)))


def insert_a_forged_record_at_the_end(conn: Connection, records: list[AuditRecord], store: SqlEventStore) -> None:
    fields = records[-1].fields() | {"position": len(records) + 1, "event_seq": 10_000, "event_id": "forged-1"}
    fields |= {"action": "model.promoted", "actor": "mallory", "reason": "approved"}
    conn.execute(
        insert(audit_records).values(**fields, prev_hash=records[-1].hash, hash=record_hash(records[-1].hash, fields))
    )


def insert_a_forged_record_in_the_middle(conn: Connection, records: list[AuditRecord], store: SqlEventStore) -> None:
    # Chain an inbound interaction that lies between records 3 and 4 as record 4, renumbering the rest.
    inbound = conn.execute(
        select(events).where(events.c.seq > records[2].event_seq, events.c.seq < records[3].event_seq)
    ).first()
    assert inbound is not None
    for position in range(len(records), 3, -1):  # one by one, highest first: positions stay unique
        _move(conn, position, position + 1)
    fields = audit_fields(row_to_event(inbound), 4) | {"action": "model.promoted", "actor": "mallory"}
    conn.execute(
        insert(audit_records).values(**fields, prev_hash=records[2].hash, hash=record_hash(records[2].hash, fields))
    )


def swap_two_records(conn: Connection, records: list[AuditRecord], store: SqlEventStore) -> None:
    _move(conn, 3, -3)
    _move(conn, 5, 3)
    _move(conn, -3, 5)


def swap_two_records_contents(conn: Connection, records: list[AuditRecord], store: SqlEventStore) -> None:
    a, b = records[9].to_dict(), records[10].to_dict()
    conn.execute(delete(audit_records).where(audit_records.c.position.in_([10, 11])))
    conn.execute(insert(audit_records), [b | {"position": 10}, a | {"position": 11}])


def update_the_chained_event(conn: Connection, records: list[AuditRecord], store: SqlEventStore) -> None:
    payload = json.loads(records[8].evidence) | {"reason": "rewritten history"}
    conn.execute(update(events).where(events.c.seq == records[8].event_seq).values(payload=canonical_json(payload)))


# tamper -> (position verify names, words its problem must contain, whose event it names: a record index)
TAMPERING: dict[str, tuple[Tamper, int, str, int | None]] = {
    "update a reason": (update_reason, 5, "altered: its reason differs from the event", 4),
    "update an evidence": (update_evidence, 7, "altered: its evidence differs from the event", 6),
    "update an actor and rehash it": (update_actor_and_its_hash, 13, "rewritten and rehashed: its actor differs", 12),
    "delete a middle record": (delete_a_middle_record, 8, "record 8 is missing", 7),
    "delete, renumber and rehash": (delete_and_renumber_and_rehash, 8, "has no record: a record was deleted", None),
    "delete the last record (truncate)": (delete_the_last_record, DECISIONS, "the last records were deleted", -1),
    "insert a forged record at the end": (
        insert_a_forged_record_at_the_end,
        DECISIONS + 1,
        "no event at seq 10000",
        None,
    ),
    "insert a forged record in the middle": (
        insert_a_forged_record_in_the_middle,
        4,
        "never audited: the record was forged",
        None,
    ),
    "swap two records": (swap_two_records, 3, "out of order", 4),
    "swap two records' contents": (swap_two_records_contents, 10, "out of order", 10),
    "update the chained event": (update_the_chained_event, 9, "the event was changed after it was chained", 8),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_verify_names_the_first_record_that_does_not_match(
    store: SqlEventStore, chained: list[AuditRecord], kind: str
) -> None:
    tamper, position, words, whose = TAMPERING[kind]
    with store.engine.begin() as conn:
        tamper(conn, chained, store)
    report = verify(store)
    assert not report.ok, kind
    assert report.first_bad == position, report.problem
    assert words in (report.problem or ""), report.problem
    assert f"record {position}" in (report.problem or "")
    if whose is not None:
        assert report.event_id == chained[whose].event_id, report.problem
        assert chained[whose].event_id in (report.problem or "")


# --- the CLI -----------------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="alignd")
    commands = parser.add_subparsers(dest="command", required=True)

    def add(sub: Any, name: str, handler: Any, help_text: str, json_flag: bool = True) -> argparse.ArgumentParser:
        # The same shape as the helper in daemon.cli.build_parser.
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON")
        return p

    add_audit_commands(commands, add)
    return parser.parse_args(argv)


def _cli(db_url: str, argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 0) -> str:
    args = _parse(["audit", *argv])
    assert args.handler(Settings(database=DatabaseSettings(url=db_url)), args) == code
    return capsys.readouterr().out


def test_cli_list_show_verify_and_export(
    store: SqlEventStore, db_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    store.append(_history())
    # verify writes nothing: the decisions are pending until a command that reads the trail chains them.
    assert json.loads(_cli(db_url, ["verify", "--json"], capsys))["pending"] == DECISIONS
    assert _records(store) == []
    header, *lines = _cli(db_url, ["list"], capsys).splitlines()
    promoted = next(r for r in _records(store) if r.action == "model.promoted")
    assert header.split()[:4] == ["POSITION", "TIME", "(UTC)", "ACTOR"] and len(lines) == DECISIONS
    line = lines[promoted.position - 1]
    assert line.split()[:5] == [str(promoted.position), "2026-11-01", "12:07:00", "alice", "model.promoted"]
    assert line.endswith("…")  # the reason, shortened
    listed = json.loads(_cli(db_url, ["list", "--actor", "mlflow", "--json"], capsys))
    assert [r["action"] for r in listed] == ["model.rolled_back"] and listed[0]["evidence"]["actor"] == "mlflow"

    shown = _cli(db_url, ["show", str(promoted.position)], capsys)
    assert shown.startswith(f"audit record {promoted.position}: model.promoted by alice\n")
    assert "[forced past failed gates: kl]" in shown and '"failed_gates": [\n' in shown
    assert f"hash       {promoted.hash} (matches its contents)" in shown
    by_id = json.loads(_cli(db_url, ["show", promoted.event_id, "--json"], capsys))
    assert by_id["position"] == promoted.position and by_id["hash_matches_contents"] is True
    with pytest.raises(AuditRecordNotFoundError, match="no audit record at position or for event 'nope'"):
        _cli(db_url, ["show", "nope"], capsys)

    out = _cli(db_url, ["verify"], capsys)
    assert out == f"chain intact: {DECISIONS} records, last hash {_records(store)[-1].hash}\n"

    exported = [json.loads(line) for line in _cli(db_url, ["export"], capsys).splitlines()]
    assert len(exported) == DECISIONS and list(exported[0]) == list(EXPORT_COLUMNS)
    offline = verify_records(exported)  # an auditor's copy re-verifies without the database
    assert offline.ok and offline.last_hash == _records(store)[-1].hash
    path = tmp_path / "audit.csv"
    assert "exported 1 audit records" in _cli(
        db_url, ["export", "--format", "csv", "--output", str(path), "--type", "model.promoted"], capsys
    )
    rows = list(csv.reader(io.StringIO(path.read_text())))
    assert tuple(rows[0]) == EXPORT_COLUMNS and len(rows) == 2 and rows[1][EXPORT_COLUMNS.index("actor")] == "alice"

    with store.engine.begin() as conn:
        _set(conn, 5, reason="routine")
    out = _cli(db_url, ["verify"], capsys, code=1)
    assert out.startswith(f"chain BROKEN at record 5: record 5 (event {_records(store)[4].event_id}")
    report = json.loads(_cli(db_url, ["verify", "--json"], capsys, code=1))
    assert report["ok"] is False and report["first_bad"] == 5 and "its reason differs" in report["problem"]


def test_cli_list_shows_both_times_in_recorded_order_and_a_skipped_enforcement_as_skipped(
    store: SqlEventStore, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store.append(_history())
    # An alert raised now about yesterday's traffic keeps the traffic's time; an enforcement that did nothing.
    late = Event(
        "anomaly:toxicity:late",
        "anomaly.detected",
        T0 - timedelta(days=1),
        "alignd.monitors",
        {"detector": "toxicity", "subject": "model:assistant@2", "severity": "warning", "summary": "late traffic"},
    )
    stale = "alignd-policy's champion is version 1, not 2: it changed since the rollback was asked for"
    skipped = Event(
        "enforcement.applied:enforcement:rollback_champion:9",
        "enforcement.applied",
        T0 + timedelta(minutes=30),
        "alignd.enforcement",
        {
            "request_event_id": "enforcement:rollback_champion:9",
            "action": "rollback_champion",
            "target": {"model": "alignd-policy", "version": "2"},
            "outcome": "skipped",
            "detail": stale,
            "error": None,
            "result": None,
            "round": 1,
            "attempts": 1,
            "actor": "alignd.enforcement",
            "reason": "toxic responses at 12% over the last 200 (limit 5%)",
        },
    )
    store.append([late, skipped])
    header, *lines = _cli(db_url, ["list"], capsys).splitlines()
    assert header.split() == ["POSITION", "TIME", "(UTC)", "ACTOR", "ACTION", "RECORDED", "(UTC)", "SUBJECT", "REASON"]
    records = _records(store)
    assert [r.position for r in records] == list(range(1, DECISIONS + 3)) and len(lines) == DECISIONS + 2
    # Recorded order, with each event's recorded_at; the late alert sits after every earlier record, not among
    # yesterday's, and keeps its own time.
    stored = {s.event.event_id: s.recorded_at for s in store.read(0, limit=10_000)}
    assert [r.recorded_at for r in records] == [format_timestamp(stored[r.event_id]) for r in records]
    assert [r.recorded_at for r in records] == sorted(r.recorded_at or "" for r in records)
    alert = records[-2]
    assert alert.event_id == late.event_id and alert.occurred_at < min(r.occurred_at for r in records[:-2])
    when = (alert.recorded_at or "")[:19].split("T")
    assert lines[-2].split()[:7] == [str(alert.position), "2026-10-31", "12:00:00", "alignd.monitors"] + [
        "anomaly.detected",
        *when,
    ]
    # The skipped enforcement reads as skipped, in the action and at the start of the (shortened) reason.
    line = lines[-1]
    assert line.split()[3:6] == ["alignd.enforcement", "enforcement", "skipped"]
    assert line.endswith("skipped: alignd-policy's champion is version 1, not 2: it c…")
    applied = [line for line in lines if "alignd.enforcement" in line and line is not lines[-1]]
    assert len(applied) == 1 and " enforcement.applied " in applied[0]  # the one that did something

    listed = json.loads(_cli(db_url, ["list", "--type", "enforcement.applied", "--json"], capsys))
    assert [(r["outcome"], r["action"]) for r in listed] == [
        ("applied", "enforcement.applied"),
        ("skipped", "enforcement.applied"),
    ]
    assert listed[1]["recorded_at"] == records[-1].recorded_at
    shown = _cli(db_url, ["show", skipped.event_id], capsys)
    assert f"recorded_at  {records[-1].recorded_at}" in shown and f"[skipped: {stale}]" in shown
    # recorded_at is read with the record, never part of the chain: the export and the hashes are as before.
    exported = [json.loads(line) for line in _cli(db_url, ["export"], capsys).splitlines()]
    assert "recorded_at" not in exported[0] and verify_records(exported).ok and verify(store).ok
