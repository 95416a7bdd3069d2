"""The DLQ outbox pages through every unpublished letter it is asked for, however many."""

from __future__ import annotations

import pytest

from consumers.dead_letter import DeadLetterPublisher
from events.model import DeadLetter, KafkaCoordinates
from events.sql_store import SqlEventStore

pytestmark = pytest.mark.integration


class _Sent:
    def get(self, timeout: float = 0) -> None:
        return None


class FakeProducer:
    """Records what was sent; the real broker path is covered by test_ingest's DLQ topic check."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, topic: str, key: bytes | None = None, value: bytes = b"", headers: object = None) -> _Sent:
        self.sent.append(value)
        return _Sent()

    def flush(self, timeout: float | None = None) -> None:
        return None


def test_more_letters_than_one_page_are_all_published(store: SqlEventStore) -> None:
    letters = [
        DeadLetter(f"t:0:{i}", "bad", "schema", b"x%d" % i, origin=KafkaCoordinates("t", 0, i)) for i in range(1203)
    ]
    ids = store.append([], dead_letters=letters).dead_letter_ids
    producer = FakeProducer()
    assert DeadLetterPublisher(store, producer, "dlq").publish_pending(list(ids), batch=500) == 1203
    assert len(producer.sent) == 1203
    assert store.list_dead_letters(unpublished_only=True) == []
