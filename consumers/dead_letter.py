"""The DLQ topic, fed from the dead-letter table (the table is its outbox), and requeueing."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from consumers.decode import REQUEUED_FROM_HEADER
from consumers.unreadable import UNREADABLE
from events.model import StoredDeadLetter
from events.sql_store import SqlEventStore

logger = logging.getLogger(__name__)

_MAX_REASON_HEADER = 2000


def dlq_headers(letter: StoredDeadLetter) -> list[tuple[str, bytes]]:
    """The original headers, plus why the message failed and where it came from."""
    dl = letter.dead_letter
    headers = [(name, value) for name, value in dl.headers if not name.startswith("alignd-dlq-")]
    headers += [
        ("alignd-dlq-reason", dl.reason[:_MAX_REASON_HEADER].encode("utf-8")),
        ("alignd-dlq-error-kind", dl.error_kind.encode("utf-8")),
        ("alignd-dlq-id", str(letter.id).encode("ascii")),
    ]
    if dl.origin is not None:
        headers += [
            ("alignd-dlq-original-topic", dl.origin.topic.encode("utf-8")),
            ("alignd-dlq-original-partition", str(dl.origin.partition).encode("ascii")),
            ("alignd-dlq-original-offset", str(dl.origin.offset).encode("ascii")),
        ]
    if dl.event_id:
        headers.append(("alignd-dlq-event-id", dl.event_id.encode("utf-8")))
    return headers


class DeadLetterPublisher:
    """Publishes dead letters to the DLQ topic after they are committed, then marks them published.

    A crash between the send and the mark publishes a letter twice; readers of the DLQ dedupe by the
    ``alignd-dlq-id`` header. A letter is never lost: unpublished rows are retried on the next call.
    """

    def __init__(self, store: SqlEventStore, producer: Any, topic: str, *, flush_timeout_s: float = 30.0) -> None:
        self.store = store
        self.producer = producer
        self.topic = topic
        self.flush_timeout_s = flush_timeout_s

    def publish_pending(self, ids: Sequence[int] | None = None, *, batch: int = 500) -> int:
        """Publish unpublished dead letters (only ``ids`` if given); returns how many were published."""
        published = 0
        after = 0
        while True:
            letters = self.store.list_dead_letters(after_id=after, limit=batch, unpublished_only=True, ids=ids)
            if not letters:
                return published
            sent = []
            for letter in letters:
                future = self.producer.send(
                    self.topic,
                    key=letter.dead_letter.key,
                    value=letter.dead_letter.value or b"",
                    headers=dlq_headers(letter),
                )
                sent.append((letter, future))
            self.producer.flush(timeout=self.flush_timeout_s)
            done = []
            for letter, future in sent:
                try:
                    future.get(timeout=0)
                    done.append(letter.id)
                except Exception as exc:  # noqa: BLE001 - the row stays unpublished and is retried later
                    logger.warning(
                        "dead letter %d (%s) not published to %s yet: %s",
                        letter.id,
                        letter.dead_letter.source_key,
                        self.topic,
                        exc,
                    )
            self.store.mark_dead_letters_published(done)
            published += len(done)
            after = letters[-1].id
            if len(letters) < batch:
                return published


def requeue(
    store: SqlEventStore, producer: Any, letters: Sequence[StoredDeadLetter], *, flush_timeout_s: float = 30.0
) -> list[int]:
    """Send dead letters back to their original topics (after a fix upstream or an upgrade of alignd).

    The message keeps its key and headers and gains ``alignd-requeued-from`` with its first coordinates.
    Returns the ids that were sent and marked requeued; letters without an original topic, or without the bytes
    (the Kafka client could not read them), are skipped.
    """
    sent = []
    for letter in letters:
        dl = letter.dead_letter
        if dl.origin is None:
            logger.warning("dead letter %d has no original topic; not requeued", letter.id)
            continue
        if dl.error_kind == UNREADABLE:  # its bytes were never read: sending "nothing" would only come back
            logger.warning("dead letter %d was never read (%s); ask its producer to resend it", letter.id, UNREADABLE)
            continue
        headers = [(n, v) for n, v in dl.headers if n != REQUEUED_FROM_HEADER]
        first = next((v for n, v in dl.headers if n == REQUEUED_FROM_HEADER), str(dl.origin).encode("utf-8"))
        headers.append((REQUEUED_FROM_HEADER, first))
        sent.append((letter.id, producer.send(dl.origin.topic, key=dl.key, value=dl.value, headers=headers)))
    producer.flush(timeout=flush_timeout_s)
    ok = []
    for letter_id, future in sent:
        try:
            future.get(timeout=0)
            ok.append(letter_id)
        except Exception as exc:  # noqa: BLE001 - reported to the operator; the letter stays as it was
            logger.error("dead letter %d could not be requeued: %s", letter_id, exc)
    store.mark_dead_letters_requeued(ok)
    return ok
