"""The event store contract (events/store.py), run against the in-memory store, SQLite and PostgreSQL (real
servers, fresh databases)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest

from events.errors import StoreError
from events.memory_store import InMemoryEventStore
from events.model import ConsumerOffset, DeadLetter, Event, KafkaCoordinates
from events.sql_store import SqlEventStore, create_store_engine
from events.store import EventStore, Position
from migrations.runner import upgrade


@pytest.fixture(
    params=[
        "memory",
        pytest.param("sqlite", marks=pytest.mark.integration),
        pytest.param("postgresql", marks=pytest.mark.integration),
    ]
)
def store(request: pytest.FixtureRequest, new_db_url: Callable[[str], str]) -> Iterator[EventStore]:
    """Each store of the contract, empty: in memory, and on a migrated SQLite and PostgreSQL database."""
    if request.param == "memory":
        yield InMemoryEventStore()
        return
    url = new_db_url(request.param)
    engine = create_store_engine(url)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    sql = SqlEventStore.from_url(url)
    try:
        yield sql
    finally:
        sql.dispose()


def _event(n: int, request_id: str | None = None, event_type: str = "interaction.logged") -> Event:
    payload = {
        "request_id": request_id or f"r{n}",
        "model": {"name": "m", "version": "1"},
        "prompt": "p",
        "response": f"r{n}",
    }
    if event_type == "feedback.received":
        payload = {"request_id": request_id or f"r{n}", "kind": "thumbs", "value": "up"}
    return Event(f"e{n}", event_type, datetime(2026, 1, 1, tzinfo=UTC), "test", payload)


def test_append_assigns_increasing_seq_and_reads_back_exactly(store: EventStore) -> None:
    result = store.append([_event(i) for i in range(5)])
    assert (result.appended, result.duplicates) == (5, 0)
    read = store.read(0)
    assert [s.event.event_id for s in read] == [f"e{i}" for i in range(5)]
    assert [s.seq for s in read] == sorted(s.seq for s in read)
    assert read[2].event == _event(2)
    assert read[0].recorded_at.tzinfo is not None


def test_duplicate_event_ids_are_ignored_within_and_across_batches(store: EventStore) -> None:
    first = store.append([_event(1), _event(2), _event(1)])
    second = store.append([_event(2), _event(3)])
    assert (first.appended, first.duplicates) == (2, 1)
    assert (second.appended, second.duplicates) == (1, 1)
    assert store.count() == 3


def test_offsets_dead_letters_and_events_commit_together(store: EventStore) -> None:
    letter = DeadLetter("t:0:7", "message is not valid JSON", "invalid_json", b"{", origin=KafkaCoordinates("t", 0, 7))
    result = store.append(
        [_event(1)],
        origins=[KafkaCoordinates("t", 0, 6)],
        offsets=[ConsumerOffset("g", "t", 0, 8)],
        dead_letters=[letter],
    )
    assert result.dead_letter_ids
    assert store.load_offsets("g", [("t", 0), ("t", 1)]) == {("t", 0): 8}
    stored = store.read(0)[0]
    assert stored.origin == KafkaCoordinates("t", 0, 6)
    [dl] = store.list_dead_letters()
    assert dl.dead_letter.value == b"{" and dl.dead_letter.origin == KafkaCoordinates("t", 0, 7)
    # the same bad message delivered again is one dead letter
    store.append([], dead_letters=[letter], offsets=[ConsumerOffset("g", "t", 0, 8)])
    assert store.count_dead_letters() == {"total": 1}


def test_a_failed_append_writes_nothing(store: EventStore) -> None:
    # the dead letter violates NOT NULL after the events were inserted in the same transaction
    broken = DeadLetter("t:0:9", None, "schema", b"x")  # type: ignore[arg-type]
    with pytest.raises(StoreError):
        store.append([_event(1)], offsets=[ConsumerOffset("g", "t", 0, 5)], dead_letters=[broken])
    assert store.count() == 0
    assert store.load_offsets("g", [("t", 0)]) == {}


def test_offsets_never_move_backwards(store: EventStore) -> None:
    store.append([], offsets=[ConsumerOffset("g", "t", 0, 100)])
    store.append([], offsets=[ConsumerOffset("g", "t", 0, 40)])  # a zombie consumer committing late
    assert store.load_offsets("g", [("t", 0)]) == {("t", 0): 100}
    store.append([], offsets=[ConsumerOffset("g", "t", 0, 120)])
    assert store.load_offsets("g", [("t", 0)]) == {("t", 0): 120}


def test_read_by_range_type_and_request_id(store: EventStore) -> None:
    store.append([_event(1, "a"), _event(2, "b"), _event(3, "a", "feedback.received"), _event(4, "c")])
    seqs = [s.seq for s in store.read(0)]
    assert [s.event.event_id for s in store.read(seqs[0], to_seq=seqs[2])] == ["e2", "e3"]
    assert [s.event.event_id for s in store.read(0, types=["feedback.received"])] == ["e3"]
    assert [s.event.event_id for s in store.by_request_id("a")] == ["e1", "e3"]
    assert [s.event.event_id for s in store.read(0, limit=2)] == ["e1", "e2"]
    assert store.count(["interaction.logged"]) == 3
    assert store.count_by_type() == {"feedback.received": 1, "interaction.logged": 3}
    assert store.get("e4") is not None and store.get("nope") is None
    assert store.max_seq() == seqs[-1]


def test_tail_without_follow_reads_everything_after_a_position(store: EventStore) -> None:
    store.append([_event(i) for i in range(7)])
    first = store.read(0, limit=1)[0].seq
    tailed = list(store.tail(first, batch_size=3, follow=False))
    assert [s.event.event_id for s in tailed] == [f"e{i}" for i in range(1, 7)]


def test_concurrent_appenders_produce_seq_in_commit_order(store: EventStore) -> None:
    """Writers racing each other: a tailer that reads by seq sees every event, none skipped."""
    writers, per_writer, batch = 4, 30, 5
    seen: list[int] = []
    done = threading.Event()

    def write(w: int) -> None:
        for b in range(per_writer // batch):
            store.append([_event(w * 1000 + b * batch + i) for i in range(batch)])

    def tail() -> None:
        for stored in store.tail(
            0, poll_interval=0.01, should_stop=lambda: done.is_set() and len(seen) >= writers * per_writer
        ):
            seen.append(stored.seq)

    tailer = threading.Thread(target=tail)
    tailer.start()
    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    tailer.join(timeout=30)
    assert not tailer.is_alive()
    assert len(seen) == writers * per_writer == store.count()
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def test_mark_dead_letters_published_and_requeued(store: EventStore) -> None:
    letters = [DeadLetter(f"t:0:{i}", "bad", "schema", b"x", origin=KafkaCoordinates("t", 0, i)) for i in range(3)]
    ids = store.append([], dead_letters=letters).dead_letter_ids
    store.mark_dead_letters_published(ids[:2])
    assert [x.id for x in store.list_dead_letters(unpublished_only=True)] == [ids[2]]
    store.mark_dead_letters_requeued([ids[0]])
    assert [x.id for x in store.list_dead_letters(include_requeued=False)] == list(ids[1:])


# --- positions (tracking records) and units of work ----------------------------------------------------------


def test_a_position_reads_as_nothing_processed_until_saved(store: EventStore) -> None:
    assert store.position("outbox:t") == Position("outbox:t", 0, None)
    store.save_position("outbox:t", 7)
    assert store.position("outbox:t") == Position("outbox:t", 7, None)
    store.save_position("outbox:t", 9)
    assert store.position("outbox:t").seq == 9


def test_a_position_keeps_its_state_and_reads_without_it_on_request(store: EventStore) -> None:
    store.save_position("monitors", 3, '{"pii": {"seen": 2}}')
    assert store.position("monitors") == Position("monitors", 3, '{"pii": {"seen": 2}}')
    assert store.position("monitors", with_state=False) == Position("monitors", 3, None)
    assert store.position("audit").seq == 0  # names are independent


def test_a_unit_of_work_commits_events_and_position_together(store: EventStore) -> None:
    with store.unit_of_work() as uow:
        assert uow.position("monitors").seq == 0
        result = uow.append([_event(1), _event(2)])
        uow.save_position("monitors", 42, "{}")
        assert uow.position("monitors") == Position("monitors", 42, "{}")  # it sees its own save
    assert result.appended == 2
    assert store.count() == 2
    assert store.position("monitors") == Position("monitors", 42, "{}")


def test_a_unit_of_work_that_raises_writes_nothing(store: EventStore) -> None:
    store.save_position("monitors", 1, "{}")
    letter = DeadLetter("t:0:1", "bad", "schema", b"x", origin=KafkaCoordinates("t", 0, 1))
    with pytest.raises(RuntimeError, match="crash"), store.unit_of_work() as uow:
        uow.append([_event(1)], offsets=[ConsumerOffset("g", "t", 0, 2)], dead_letters=[letter])
        uow.save_position("monitors", 5, '{"x": 1}')
        uow.delete_position("monitors")
        raise RuntimeError("crash before commit")
    assert store.count() == 0 and store.get("e1") is None
    assert store.load_offsets("g", [("t", 0)]) == {}
    assert store.count_dead_letters() == {"total": 0}
    assert store.position("monitors") == Position("monitors", 1, "{}")
    # and the store works on afterwards, the same event id appending as new
    assert store.append([_event(1)]).appended == 1


def test_a_unit_of_work_without_the_append_lock_may_still_append(store: EventStore) -> None:
    with store.unit_of_work(append_lock=False) as uow:
        uow.save_position("enforcement", 3)
        uow.append([_event(1)])
    assert store.count() == 1 and store.position("enforcement").seq == 3


def test_a_deleted_position_reads_as_nothing_processed(store: EventStore) -> None:
    store.save_position("interactions", 12)
    store.save_position("monitors", 12, "{}")
    with store.unit_of_work(append_lock=False) as uow:
        uow.delete_position("interactions")
        uow.delete_position("monitors")
    assert store.position("interactions") == Position("interactions")
    assert store.position("monitors") == Position("monitors")


def test_a_store_that_answers_pings(store: EventStore) -> None:
    store.ping()


def test_read_model_rows_are_loaded_replaced_and_cleared_in_units_of_work(store: EventStore) -> None:
    from events.tables import proj_quarantine as table

    def row(kind: str, subject: str, seq: int) -> dict[str, object]:
        return {"subject_kind": kind, "subject_id": subject, "seq": seq, "request_event_id": f"q{seq}", "reason": "r"}

    with store.unit_of_work(append_lock=False) as uow:
        uow.write_rows(table, stale=[], rows=[row("user", "u2", 1), row("event", "e1", 2), row("user", "u1", 3)])
    with store.unit_of_work(append_lock=False) as uow:
        found = uow.load_rows(table, [("user", "u1"), ("user", "nobody")])
        assert found == {("user", "u1"): row("user", "u1", 3)}
        uow.write_rows(table, stale=[("user", "u1")], rows=[row("user", "u1", 9)])
    assert [(r["subject_kind"], r["subject_id"], r["seq"]) for r in store.table_rows(table)] == [
        ("event", "e1", 2),
        ("user", "u1", 9),
        ("user", "u2", 1),
    ]
    with pytest.raises(RuntimeError), store.unit_of_work(append_lock=False) as uow:
        uow.clear_rows(table)
        raise RuntimeError("crash before commit")
    assert len(list(store.table_rows(table))) == 3
    with store.unit_of_work(append_lock=False) as uow:
        uow.clear_rows(table)
    assert list(store.table_rows(table)) == []


def test_a_unit_of_work_reads_events_as_it_sees_them(store: EventStore) -> None:
    store.append([_event(1, "a"), _event(2, "b"), _event(3, "a", "feedback.received")])
    with store.unit_of_work() as uow:
        uow.append([_event(4, "a")])
        assert [s.event.event_id for s in uow.read(0, limit=10)] == ["e1", "e2", "e3", "e4"]
        assert [s.event.event_id for s in uow.read(0, limit=10, types=["feedback.received"])] == ["e3"]
        last = uow.read(0, limit=10)[-1].seq
        about_a = uow.by_request_id(["a"], max_seq=last, types=["interaction.logged"])
        assert [s.event.event_id for s in about_a] == ["e1", "e4"]
        assert uow.by_request_id([], max_seq=last) == []


def test_a_claimed_position_is_held_until_its_unit_of_work_ends(store: EventStore) -> None:
    """Two units of work claiming one position take turns: the second reads what the first saved."""
    first_has_it, release = threading.Event(), threading.Event()
    seen: list[int] = []

    def first() -> None:
        with store.unit_of_work(append_lock=False) as uow:
            assert uow.position("folder", claim=True).seq == 0
            uow.save_position("folder", 7)
            first_has_it.set()
            release.wait(timeout=30)

    def second() -> None:
        with store.unit_of_work(append_lock=False) as uow:
            seen.append(uow.position("folder", claim=True).seq)
            uow.save_position("folder", seen[-1] + 1)

    holder = threading.Thread(target=first)
    holder.start()
    assert first_has_it.wait(timeout=30)
    waiter = threading.Thread(target=second)
    waiter.start()
    waiter.join(timeout=0.5)
    assert waiter.is_alive() and seen == []  # it waits for the claim
    release.set()
    holder.join(timeout=30)
    waiter.join(timeout=30)
    assert seen == [7] and store.position("folder").seq == 8


def test_projection_runners_folding_at_once_take_turns_and_fold_each_event_once(store: EventStore) -> None:
    """Two replicas' runners (the ingest and project roles) catching up the same projections at the same time."""
    from events.projections.runner import ProjectionRunner

    interactions = [_event(n, request_id=f"r{n}") for n in range(1, 601)]
    store.append(interactions)
    errors: list[BaseException] = []

    def fold() -> None:
        try:
            ProjectionRunner(store, batch_size=25).catch_up()
        except BaseException as exc:  # noqa: BLE001 - the test reports any failure of either runner
            errors.append(exc)

    runners = [threading.Thread(target=fold) for _ in range(3)]
    for runner in runners:
        runner.start()
    for runner in runners:
        runner.join(timeout=120)
    assert errors == []
    alone = ProjectionRunner(store)
    digests = alone.digests()
    alone.replay()
    assert alone.digests() == digests  # what the three folded together is what one folds from scratch
