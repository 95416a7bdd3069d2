"""Publishes events from the store to a Kafka topic: the store is the outbox (docs/store.md).

The publisher keeps its position (last ``seq`` published) under the name ``outbox:<topic>`` (a store position,
events/store.py), and moves it only after the broker has acknowledged the messages, so a crash never
loses one; it can publish one twice (a crash after the acknowledgement, before the checkpoint), and readers
dedupe by the ``event_id`` header. Messages are the event's canonical JSON with its ``seq``, keyed by
``subject`` when the payload has one (one alert subject stays in one partition, in order).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from events.codec import canonical_json, event_to_dict, format_timestamp
from events.store import EventStore

logger = logging.getLogger(__name__)


class OutboxPublisher:
    def __init__(
        self, store: EventStore, producer: Any, topic: str, types: Sequence[str], *, batch_size: int = 500
    ) -> None:
        self.store = store
        self.producer = producer
        self.topic = topic
        self.types = tuple(types)
        self.name = f"outbox:{topic}"
        self.batch_size = batch_size

    def position(self) -> int:
        return self.store.position(self.name).seq

    def publish(self, *, flush_timeout_s: float = 30.0) -> int:
        """Publish everything of ``types`` after the position; returns how many messages were sent."""
        sent = 0
        while True:
            position = self.position()
            batch = self.store.read(position, limit=self.batch_size, types=self.types)
            if not batch:
                return sent
            futures = []
            for stored in batch:
                body = {
                    "seq": stored.seq,
                    "recorded_at": format_timestamp(stored.recorded_at),
                    **event_to_dict(stored.event),
                }
                subject = stored.event.payload.get("subject")
                futures.append(
                    self.producer.send(
                        self.topic,
                        key=subject.encode("utf-8") if isinstance(subject, str) else None,
                        value=canonical_json(body).encode("utf-8"),
                        headers=[
                            ("event_id", stored.event.event_id.encode("utf-8")),
                            ("type", stored.event.type.encode()),
                        ],
                    )
                )
            self.producer.flush(timeout=flush_timeout_s)
            for future in futures:
                future.get(timeout=0)  # raises if the broker refused one: the position stays, all are retried
            self.store.save_position(self.name, batch[-1].seq)
            sent += len(batch)
            logger.info("published %d events to %s up to seq %d", len(batch), self.topic, batch[-1].seq)
