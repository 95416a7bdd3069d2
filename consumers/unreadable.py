"""Records the Kafka client itself cannot read, found and stepped over so that they cannot stop ingestion.

A hostile or buggy producer can write a record that kafka-python fails to parse (a header key that is not UTF-8:
``CorruptRecordError: Found invalid record structure``; a compression codec that is not installed:
``UnsupportedCodecError``). ``poll`` then raises without saying which partition or offset, and keeps raising (or,
if nothing is sought, blocks past its timeout: measured with kafka-python 3.0.12), so the loop would stop there
for good. kafka-python also parses a record batch as a whole: a seek past the bad record but inside its batch
raises again, so the rest of that batch cannot be read either.

What this module does, with the clients' public API only: a second consumer, outside the group, is assigned one
partition with records left at a time, sought to the group consumer's position and polled; the partition that
raises is the culprit, at that position (the records before the bad one were already returned). Then offsets
after it are tried one by one until one reads (the next batch) or the end of the partition. The caller
dead-letters that range with reasons and seeks the group consumer past it. The records are lost to kafka-python,
not silently: each offset is a dead letter without bytes.

Why a second consumer: after such a failure kafka-python 3.0.12 keeps the dead record iterator, and a poll at the
same position spins forever inside ``fetched_records`` (measured). A fresh consumer has no such state, and each of
its probes moves forward, to a position no dead iterator is waiting at.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from kafka.errors import CorruptRecordError, KafkaError, UnsupportedCodecError
from kafka.structs import TopicPartition

from events.model import DeadLetter, KafkaCoordinates

logger = logging.getLogger(__name__)

#: The error kind of a record the Kafka client could not read (so there are no bytes to keep).
UNREADABLE = "unreadable_record"

#: How long one partition is polled to see whether it reads or raises (a fetch is a few milliseconds here).
PROBE_S = 3.0


def is_record_error(exc: BaseException) -> bool:
    """Whether ``poll`` failed on a record's contents rather than on the broker or the connection."""
    return isinstance(exc, CorruptRecordError | UnsupportedCodecError) or not isinstance(exc, KafkaError)


def raises_at(probe: Any, tp: TopicPartition, offset: int, probe_s: float = PROBE_S) -> bool:
    """Seek ``tp`` (assigned to ``probe`` alone) to ``offset`` and poll: True if the client fails there."""
    probe.seek(tp, offset)
    deadline = time.monotonic() + probe_s
    while time.monotonic() < deadline:
        try:
            fetched = probe.poll(timeout_ms=200, max_records=1)
        except Exception as exc:
            if is_record_error(exc):
                return True
            raise
        if fetched.get(tp):
            return False
    return False


def locate(
    probe: Any, positions: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int], probe_s: float = PROBE_S
) -> tuple[TopicPartition, int] | None:
    """The partition and offset the group consumer fails on, or None if no partition fails when read alone.

    Args:
        probe: a consumer outside the group (``group_id=None``), used for nothing else.
        positions: the group consumer's position in each of its partitions.
        ends: each partition's end offset.
    """
    for tp in sorted(positions):
        if positions[tp] >= ends.get(tp, 0):
            continue
        probe.assign([tp])
        if raises_at(probe, tp, positions[tp], probe_s):
            return tp, positions[tp]
    return None


def readable_from(probe: Any, tp: TopicPartition, bad: int, end: int, probe_s: float = PROBE_S) -> int:
    """The first offset after ``bad`` that the client can read again (or ``end``, the partition's end)."""
    probe.assign([tp])
    for offset in range(bad + 1, end):
        if not raises_at(probe, tp, offset, probe_s):
            return offset
        if (offset - bad) % 1000 == 0:
            logger.warning("%s[%d]: still unreadable at %d (from %d); stepping on", tp.topic, tp.partition, offset, bad)
    return max(end, bad + 1)


def unreadable_letters(tp: TopicPartition, bad: int, readable: int, error: BaseException) -> list[DeadLetter]:
    """One dead letter per offset the client could not read: the bad record, then the rest of its batch."""
    cause = f"{type(error).__name__}: {str(error)[:300]}"
    letters = []
    for offset in range(bad, readable):
        origin = KafkaCoordinates(tp.topic, tp.partition, offset)
        if offset == bad:
            reason = (
                f"the Kafka client could not read this record ({cause}); its bytes could not be kept. Check the "
                "producer (header names must be UTF-8; compression must be gzip, snappy, lz4 or zstd)"
            )
        else:
            reason = (
                f"not read: it is in the same record batch as the unreadable record at offset {bad} ({cause}), "
                "which the Kafka client cannot read past; the producer may resend it"
            )
        letters.append(DeadLetter(str(origin), reason, UNREADABLE, None, origin=origin))
    return letters
