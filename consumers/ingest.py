"""The ingestion loop: Kafka -> event store, effectively once.

Order of a batch (docs/store.md):

1. poll records; 2. decode each into an event or a dead letter (pure); 3. one database transaction
appends the events (duplicates ignored), the dead letters and the next offset of every partition in the
batch; 4. publish the new dead letters to the DLQ topic (the table is the outbox); 5. commit the offsets
to Kafka (4 and 5 are batched over ``kafka_commit_interval_s``). The database is the source of truth for positions: on assignment each partition is sought to
the offset stored there, so a crash anywhere replays at most the batch in flight, and its events are
duplicates that the store ignores. The Kafka commit is for lag monitoring and for a database that has no
offset yet.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kafka import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from consumers import unreadable
from consumers.dead_letter import DeadLetterPublisher
from consumers.decode import KafkaRecord, decode_record, record_headers
from consumers.metrics import INGEST_METRICS
from consumers.otel_join import HELD, HeldSpan, JoinInput, OtelJoin
from consumers.otlp import OTLP_METRICS, decode_otlp_record
from consumers.otlp_logs import decode_otlp_logs_record
from events.errors import StoreError, StoreRefusedError, StoreUnavailableError
from events.model import (
    DEFAULT_MAX_MESSAGE_BYTES,
    AppendResult,
    ConsumerOffset,
    DeadLetter,
    Event,
    KafkaCoordinates,
)
from events.otel_join import SqlJoinParts
from events.sql_store import SqlEventStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConfig:
    """How the loop runs. Built from settings by the daemon."""

    group_id: str
    topics: tuple[str, ...]
    dlq_topic: str
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    poll_timeout_ms: int = 500
    max_poll_records: int = 5000
    retry_initial_s: float = 0.5
    retry_max_s: float = 10.0
    #: Kafka commits and DLQ publishing are batched over this interval (and done on stop). The stored
    #: offsets are the ones that count (docs/store.md); the Kafka commit only feeds lag monitoring, and a
    #: blocking commit and DLQ flush per batch cost ~25 ms, a third of the time of a 2,000-record batch.
    kafka_commit_interval_s: float = 1.0
    #: Topics of OTLP traces from the OpenTelemetry Collector's kafka exporter (consumers/otlp.py): their LLM spans
    #: become interactions. Subscribed to with ``topics``.
    otlp_topics: tuple[str, ...] = ()
    #: ``auto`` (JSON when the message starts with ``{``), ``otlp_proto`` or ``otlp_json``.
    otlp_encoding: str = "auto"
    #: Topics of OTLP logs from the Collector's kafka exporter: the GenAI events among them carry the content of
    #: the LLM spans of ``otlp_topics``, which are joined with them (consumers/otel_join.py). Needs ``otlp_topics``.
    otlp_log_topics: tuple[str, ...] = ()
    #: How long a span and its log records wait for each other before timing out (by offsets, see otel_join.py).
    otlp_join_window_s: float = 60.0

    def __post_init__(self) -> None:
        if self.otlp_log_topics and not self.otlp_topics:
            raise ValueError(
                "topics.otlp_logs is set without topics.otlp_spans: the log records carry the content of LLM spans "
                "and are joined with them; set topics.otlp_spans to the Collector's traces topic"
            )


@dataclass
class IngestStats:
    batches: int = 0
    records: int = 0
    appended: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    store_retries: int = 0
    rebalances: int = 0
    #: OpenTelemetry spans that were not LLM calls (or had no content), from the OTLP topics
    spans_skipped: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def summary(self) -> str:
        elapsed = max(time.monotonic() - self.started_at, 1e-9)
        return (
            f"{self.records} records in {self.batches} batches: {self.appended} appended, {self.duplicates} "
            f"duplicates, {self.dead_letters} dead letters, {self.store_retries} store retries, "
            f"{self.rebalances} rebalances ({self.records / elapsed:,.0f} records/s)"
        ) + (f"; {self.spans_skipped} OpenTelemetry spans skipped" if self.spans_skipped else "")


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        # Finish the batch being written and commit it before the partitions go to another consumer, so
        # it starts where this one stopped (were it not finished, it would re-read and find duplicates).
        self.ingestor._finish_in_flight(in_callback=True)  # noqa: SLF001 - the listener is the ingestor's own part
        revoked = list(revoked)
        if revoked:
            logger.info("partitions revoked: %s", _names(revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.ingestor._on_assigned(list(assigned))  # noqa: SLF001 - the listener is the ingestor's own part


def _names(partitions: Iterable[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions))


def _log_dead_letter(record: Any, letter: DeadLetter) -> None:
    logger.warning(
        "dead letter %s[%d]@%d: %s",
        record.topic,
        record.partition,
        record.offset,
        letter.reason,
        extra={
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "error_kind": letter.error_kind,
        },
    )


class Ingestor:
    """Consumes the inbound topics into the store until stopped.

    Args:
        store: the event store.
        consumer: a ``kafka.KafkaConsumer`` built with ``enable_auto_commit=False`` and the group id,
            not yet subscribed.
        publisher: publishes dead letters to the DLQ topic.
        config: topics, group and limits.
        after_batch: called after each stored batch (the daemon folds projections there).
        on_stored: called from the writer thread as soon as a batch has committed, before the loop gets
            to ``after_batch`` (which waits for the next poll); must be quick and must not raise. The
            daemon wakes its monitor loop with it.
        open_probe: builds a consumer outside the group (``group_id=None``) with the same connection settings;
            used to find a record the Kafka client cannot read (consumers/unreadable.py). Without it such a
            record stops the loop, as it would any Kafka consumer.
    """

    def __init__(
        self,
        store: SqlEventStore,
        consumer: Any,
        publisher: DeadLetterPublisher,
        config: IngestConfig,
        *,
        after_batch: Callable[[AppendResult], None] | None = None,
        on_stored: Callable[[], None] | None = None,
        open_probe: Callable[[], Any] | None = None,
    ) -> None:
        self.store = store
        self.consumer = consumer
        self.publisher = publisher
        self.config = config
        self.after_batch = after_batch
        self.on_stored = on_stored
        self.open_probe = open_probe
        self._stopping = False
        self._needs_seek: set[TopicPartition] = set()
        self._store_down = False
        self._in_flight: tuple[_Batch, Future[AppendResult]] | None = None
        self._completed: list[tuple[_Batch, AppendResult]] = []
        self._uncommitted: dict[TopicPartition, int] = {}
        self._unpublished: list[int] = []
        self._last_kafka_commit = 0.0
        self._writer: ThreadPoolExecutor | None = None
        self._join: OtelJoin | None = None
        self.stats = IngestStats()

    def stop(self) -> None:
        """Ask the loop to finish the batch in hand, commit it and return (safe from a signal handler)."""
        self._stopping = True

    # --- rebalance -----------------------------------------------------------------------------

    def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        self.stats.rebalances += 1
        if not assigned:
            return
        logger.info("partitions assigned: %s", _names(assigned))
        if self._store_down:
            # The store is being retried: hold the new partitions until it is back, then seek them.
            self.consumer.pause(*assigned)
            self._needs_seek.update(assigned)
            return
        try:
            self._seek_to_stored(assigned)
        except StoreUnavailableError as exc:
            logger.warning(
                "cannot read stored offsets for %s (%s); holding them until the store is back", _names(assigned), exc
            )
            self.consumer.pause(*assigned)
            self._needs_seek.update(assigned)

    def _seek_to_stored(
        self, partitions: Sequence[TopicPartition], fallback: Mapping[TopicPartition, int] | None = None
    ) -> None:
        stored = self.store.load_offsets(self.config.group_id, [(tp.topic, tp.partition) for tp in partitions])
        for tp in partitions:
            offset = stored.get((tp.topic, tp.partition))
            if offset is not None:
                self.consumer.seek(tp, offset)
                logger.info("%s[%d] resumes at stored offset %d", tp.topic, tp.partition, offset)
            elif fallback and tp in fallback:
                self.consumer.seek(tp, fallback[tp])
            else:
                logger.info(
                    "%s[%d] has no stored offset; starting from Kafka's committed offset or the reset policy",
                    tp.topic,
                    tp.partition,
                )

    def _resolve_pending_seeks(self, polled: dict[TopicPartition, list[Any]]) -> None:
        """Seek partitions assigned while the store was down; drop what was fetched for them meanwhile."""
        pending = [tp for tp in self._needs_seek if tp in self.consumer.assignment()]
        self._needs_seek.clear()
        if not pending:
            return
        dropped = {tp: polled.pop(tp)[0].offset for tp in pending if polled.get(tp)}
        self._with_store_retry(lambda: self._seek_to_stored(pending, dropped))
        self.consumer.resume(*pending)

    def _rewind(self, polled: Mapping[TopicPartition, Sequence[Any]]) -> None:
        """Put fetched-but-unprocessed records back, so the next poll returns them again."""
        assignment = self.consumer.assignment()
        for tp, records in polled.items():
            if records and tp in assignment:
                self.consumer.seek(tp, records[0].offset)

    # --- the loop ------------------------------------------------------------------------------

    def _records_behind(self) -> int:
        """Records the assigned partitions hold past this consumer's positions (0: caught up). When the broker
        cannot say, 0: an idle stop is never held up by a question it cannot answer."""
        try:
            assigned = list(self.consumer.assignment())
            ends = self.consumer.end_offsets(assigned)
            return sum(max(0, int(ends[tp]) - int(self.consumer.position(tp))) for tp in assigned)
        except Exception as exc:  # noqa: BLE001 - kafka-python raises several kinds here; the answer is "unknown"
            logger.debug("could not tell how far behind the consumer is: %s", exc)
            return 0

    def run(self, *, until_idle: float | None = None, max_events: int | None = None) -> IngestStats:
        """Consume until :meth:`stop`, ``until_idle`` seconds without records while caught up (counted while
        partitions are assigned and none holds records past the consumer's position), or ``max_events`` records.

        One batch is written while the next is polled and decoded (a single writer thread), so database
        time overlaps Kafka and validation time. Offsets of a batch are committed to Kafka only after
        its write has committed, from this thread (the consumer is not thread-safe).

        Returns:
            counters of what was done; the consumer is closed without an automatic commit.
        """
        self.stats = IngestStats()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alignd-store-writer")
        self._join = self._otel_join()
        topics = [*self.config.topics, *self.config.otlp_topics, *self.config.otlp_log_topics]
        self.consumer.subscribe(topics, listener=_Rebalance(self))
        idle_since = unassigned_since = time.monotonic()
        submitted = 0
        try:
            self._with_store_retry(self.publisher.publish_pending)
            while not self._stopping:
                max_records = self.config.max_poll_records
                if max_events is not None:
                    max_records = max(1, min(max_records, max_events - submitted))
                fetched = self._poll(max_records)
                polled = {tp: list(r) for tp, r in fetched.items()}
                self._flush_completed()  # batches a rebalance callback finished during that poll
                if self._needs_seek:
                    self._finish_in_flight()
                    self._resolve_pending_seeks(polled)
                polled = {tp: r for tp, r in polled.items() if r}
                if not polled:
                    self._finish_in_flight()
                    self._join_pass()  # spans and log records time out while no record comes too
                    now = time.monotonic()
                    if not self.consumer.assignment():
                        # Joining the group can take a session timeout (a crashed member must expire first):
                        # idleness only counts once there are partitions to be idle on.
                        idle_since = now
                        if until_idle is not None and now - unassigned_since >= until_idle + 60:
                            logger.warning(
                                "no partitions assigned after %.0fs; check the topics %s exist",
                                now - unassigned_since,
                                ", ".join(self.config.topics),
                            )
                            break
                    else:
                        unassigned_since = now
                        if until_idle is not None and now - idle_since >= until_idle:
                            # Idle means caught up: right after an assignment, fetching the first records of a
                            # partition (its offsets looked up, then reset) can take longer than until_idle on a
                            # busy broker, and stopping then would leave the topic unread.
                            behind = self._records_behind()
                            if not behind:
                                logger.info("no records for %.1fs; stopping", until_idle)
                                break
                            if now - idle_since >= until_idle + 60:
                                logger.warning(
                                    "no records for %.0fs although %d are waiting on %s; stopping",
                                    now - idle_since,
                                    behind,
                                    ", ".join(sorted({tp.topic for tp in self.consumer.assignment()})),
                                )
                                break
                    continue
                idle_since = unassigned_since = time.monotonic()
                batch = self._decode(polled)
                self._finish_in_flight()
                self._submit(batch)
                submitted += batch.count
                if max_events is not None and submitted >= max_events:
                    break
            self._finish_in_flight()
            self._flush_completed(force=True)
        except _Stopped:
            logger.info(
                "stopped while the store was unavailable; the batch in hand was not committed and will be re-read"
            )
        finally:
            self._writer.shutdown(wait=True)
            self._writer = None
            logger.info("ingest finished: %s", self.stats.summary())
            self.consumer.close(autocommit=False)
        return self.stats

    def _poll(self, max_records: int) -> Mapping[TopicPartition, Sequence[Any]]:
        """One poll; a record the Kafka client cannot read is set aside instead of stopping the loop."""
        try:
            return self.consumer.poll(timeout_ms=self.config.poll_timeout_ms, max_records=max_records)  # type: ignore[no-any-return]
        except Exception as exc:
            if not unreadable.is_record_error(exc):
                raise
            self._set_aside_unreadable(exc)
            return {}

    def _set_aside_unreadable(self, error: Exception) -> None:
        """Find the record ``poll`` failed on, dead-letter it (and the rest of its batch, which the client cannot
        read either) with the next offset in one store transaction, and seek past it (consumers/unreadable.py)."""
        self._finish_in_flight()  # the positions of the batches before it are then final
        if self.open_probe is None:
            raise error
        assignment = sorted(self.consumer.assignment())
        positions = {tp: self.consumer.position(tp) for tp in assignment}
        ends = self.consumer.end_offsets(assignment)
        probe = self.open_probe()
        try:
            found = unreadable.locate(probe, positions, ends)
            if found is None:
                # Not reproduced by reading each partition alone (a probe that timed out, an error that is not a
                # record's): this consumer cannot be trusted to poll again (it may spin at the failed position;
                # see consumers/unreadable.py), so the error goes up: the supervisor restarts the role with a new
                # consumer, which resumes at the stored offsets and tries again.
                logger.error("poll failed (%s: %s) and no partition fails alone", type(error).__name__, error)
                raise error
            tp, bad = found
            readable = unreadable.readable_from(probe, tp, bad, ends.get(tp, bad + 1))
        finally:
            probe.close(autocommit=False)
        letters = unreadable.unreadable_letters(tp, bad, readable, error)
        offset = ConsumerOffset(self.config.group_id, tp.topic, tp.partition, readable)
        result = self._with_store_retry(lambda: self.store.append([], offsets=[offset], dead_letters=letters))
        self.consumer.seek(tp, readable)
        self.stats.dead_letters += result.dead_letters
        self._unpublished.extend(result.dead_letter_ids)
        logger.error(
            "%s[%d]@%d: the Kafka client cannot read it (%s: %s); %d offsets dead-lettered, resuming at %d",
            tp.topic,
            tp.partition,
            bad,
            type(error).__name__,
            error,
            len(letters),
            readable,
            extra={"topic": tp.topic, "partition": tp.partition, "offset": bad, "error_kind": unreadable.UNREADABLE},
        )

    def _decode(self, polled: dict[TopicPartition, list[Any]]) -> _Batch:
        batch = _Batch(polled=polled)
        for records in polled.values():
            for record in records:
                if record.topic in self.config.otlp_topics:
                    self._decode_otlp(record, batch)
                    continue
                if record.topic in self.config.otlp_log_topics:
                    self._decode_otlp_logs(record, batch)
                    continue
                decoded = decode_record(record, max_bytes=self.config.max_message_bytes)
                if isinstance(decoded, DeadLetter):
                    batch.letters.append(decoded)
                    _log_dead_letter(record, decoded)
                else:
                    batch.events.append(decoded)
                    batch.origins.append(KafkaCoordinates(record.topic, record.partition, record.offset))
                    batch.records.append(record)
            batch.count += len(records)
        batch.next_offsets = {tp: records[-1].offset + 1 for tp, records in polled.items()}
        if self._join is not None:
            batch.join.probe = self._join.probe(self.consumer)
        return batch

    def _decode_otlp(self, record: Any, batch: _Batch) -> None:
        """A record of OTLP traces: one event per LLM span (all from the record's coordinates), spans that are not
        LLM calls counted, and a dead letter if the message or some of its LLM spans cannot be read."""
        decoded = decode_otlp_record(
            record,
            max_bytes=self.config.max_message_bytes,
            encoding=self.config.otlp_encoding,
            hold_no_content=self._join is not None,
        )
        origin = KafkaCoordinates(record.topic, record.partition, record.offset)
        batch.join.spans.extend(HeldSpan(span, origin) for span in decoded.held)
        for event in decoded.events:
            batch.events.append(event)
            batch.origins.append(origin)
            batch.records.append(record)
        if decoded.letter is not None:
            batch.letters.append(decoded.letter)
            _log_dead_letter(record, decoded.letter)
        self.stats.spans_skipped += sum(decoded.skipped.values())
        OTLP_METRICS.observe(decoded)

    def _decode_otlp_logs(self, record: Any, batch: _Batch) -> None:
        """A record of OTLP logs: its GenAI events go to the join, the other log records are counted."""
        decoded = decode_otlp_logs_record(
            record, max_bytes=self.config.max_message_bytes, encoding=self.config.otlp_encoding
        )
        batch.join.logs.extend(decoded.parts)
        if decoded.letter is not None:
            batch.letters.append(decoded.letter)
            _log_dead_letter(record, decoded.letter)
        OTLP_METRICS.log_records.labels(HELD).inc(len(decoded.parts))
        for outcome, count in decoded.skipped.items():
            OTLP_METRICS.log_records.labels(outcome).inc(count)

    def _otel_join(self) -> OtelJoin | None:
        if not self.config.otlp_log_topics:
            return None
        return OtelJoin(
            SqlJoinParts(self.store),
            group_id=self.config.group_id,
            span_topics=self.config.otlp_topics,
            log_topics=self.config.otlp_log_topics,
            window_s=self.config.otlp_join_window_s,
        )

    def _join_pass(self) -> None:
        """While idle: submit an empty batch that carries a probe, so waiting parts time out."""
        probe = self._join.probe(self.consumer) if self._join is not None else None
        if probe is not None:
            self._submit(_Batch(polled={}, join=JoinInput(probe=probe)))

    def _append(self, batch: _Batch) -> AppendResult:
        offsets = [
            ConsumerOffset(self.config.group_id, tp.topic, tp.partition, o) for tp, o in batch.next_offsets.items()
        ]
        events, origins, records, letters = batch.events, batch.origins, batch.records, batch.letters
        joined = self._join.process(batch.join) if self._join is not None and batch.join else None
        if joined is not None:  # the interactions the join brought out go with the batch (consumers/otel_join.py)
            events, origins = [*events, *joined.events], [*origins, *joined.origins]
            records, letters = [*records, *joined.records], [*letters, *joined.letters]
            batch.join_skipped = sum(joined.skipped.values())
        if events or letters or offsets:
            result = append_isolating(self.store, events, origins, records, letters, offsets)
        else:
            result = AppendResult(appended=0, duplicates=0, dead_letters=0)
        if joined is not None and self._join is not None:
            self._join.settle(joined)
        if self.on_stored is not None and result.appended:
            self.on_stored()
        return result

    def _submit(self, batch: _Batch) -> None:
        assert self._writer is not None, "only while run() is running"
        self._in_flight = (batch, self._writer.submit(self._append, batch))

    def _finish_in_flight(self, *, in_callback: bool = False) -> None:
        """Wait for the batch being written; then publish its dead letters and commit its offsets to Kafka.

        Args:
            in_callback: called from a rebalance callback, which kafka-python runs on its IO thread where
                no blocking Kafka call (a commit, a flush) and no polling (so no store retry loop) may
                happen. The write is awaited so the stored offsets are final before the partitions move;
                the rest is left to the loop (:meth:`_flush_completed`). A batch whose write failed is
                dropped uncommitted, and its records are read again from the stored offsets.
        """
        if self._in_flight is None:
            return
        batch, future = self._in_flight
        self._in_flight = None
        try:
            result = future.result()
        except StoreUnavailableError:
            if in_callback:
                logger.warning(
                    "store unavailable during a rebalance; batch of %d records dropped uncommitted", batch.count
                )
                return
            result = self._with_store_retry(lambda: self._append(batch), batch.polled)
        self.stats.batches += 1 if batch.count else 0  # not the join's idle passes
        self.stats.records += batch.count
        self.stats.spans_skipped += batch.join_skipped
        self.stats.appended += result.appended
        self.stats.duplicates += result.duplicates
        self.stats.dead_letters += result.dead_letters
        INGEST_METRICS.observe(batch.count, result.appended, result.duplicates, result.dead_letters)
        logger.debug(
            "batch stored: %d records, %d appended, %d duplicates, %d dead letters",
            batch.count,
            result.appended,
            result.duplicates,
            result.dead_letters,
        )
        self._completed.append((batch, result))
        if not in_callback:
            self._flush_completed()

    def _flush_completed(self, *, force: bool = False) -> None:
        """For stored batches: fold projections, then (at most every ``kafka_commit_interval_s``, and
        always when ``force``) publish their dead letters and commit their offsets to Kafka."""
        while self._completed:
            batch, result = self._completed.pop(0)
            self._uncommitted.update(batch.next_offsets)
            self._unpublished.extend(result.dead_letter_ids)
            if self.after_batch is not None:
                self.after_batch(result)
        now = time.monotonic()
        if not force and now - self._last_kafka_commit < self.config.kafka_commit_interval_s:
            return
        self._last_kafka_commit = now
        if self._unpublished:
            ids, self._unpublished = self._unpublished, []
            try:
                self.publisher.publish_pending(ids)
            except StoreUnavailableError as exc:
                logger.warning(
                    "dead letters stored but not yet published to the DLQ (%s); retried on the next start", exc
                )
        if self._uncommitted:
            offsets, self._uncommitted = self._uncommitted, {}
            self._commit_kafka(offsets)

    def _commit_kafka(self, next_offsets: Mapping[TopicPartition, int]) -> None:
        assignment = self.consumer.assignment()
        offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in next_offsets.items() if tp in assignment}
        if not offsets:
            return
        try:
            self.consumer.commit(offsets=offsets)
        except KafkaError as exc:
            # Harmless for correctness: the store holds the offsets and wins on the next assignment.
            logger.warning("Kafka offset commit failed (%s); the stored offsets remain authoritative", exc)

    def _with_store_retry(
        self, action: Callable[[], Any], polled: dict[TopicPartition, list[Any]] | None = None
    ) -> Any:
        """Run ``action``; while the store is unreachable, pause consumption and retry with backoff.

        Polling continues (paused) between attempts so the consumer stays in its group. If the partitions
        of the batch in hand are revoked meanwhile, the attempt still goes ahead: the events are
        duplicates for the new owner at worst, and stored offsets never move backwards.
        """
        delay = self.config.retry_initial_s
        while True:
            try:
                result = action()
            except StoreUnavailableError as exc:
                if self._stopping:
                    if polled:
                        self._rewind(polled)
                    raise _Stopped() from exc
                self.stats.store_retries += 1
                INGEST_METRICS.store_retries.inc()
                if not self._store_down:
                    logger.error("event store unavailable, pausing consumption and retrying: %s", exc)
                self._store_down = True
                paused = list(self.consumer.assignment())
                if paused:
                    self.consumer.pause(*paused)
                fetched = self.consumer.poll(timeout_ms=int(delay * 1000))
                fetched = {tp: list(r) for tp, r in fetched.items() if r}
                if fetched:
                    self._rewind(fetched)
                delay = min(delay * 2, self.config.retry_max_s)
                continue
            if self._store_down:
                logger.warning("event store is back after %d retries; resuming", self.stats.store_retries)
                self._store_down = False
                held = [tp for tp in self.consumer.assignment() if tp not in self._needs_seek]
                if held:
                    self.consumer.resume(*held)
            return result


#: The error kind of an event that passed validation but that the database refused (its reason quotes it).
STORE_REFUSED = "store_refused"


def append_isolating(
    store: SqlEventStore,
    events: Sequence[Event],
    origins: Sequence[KafkaCoordinates | None],
    records: Sequence[KafkaRecord],
    letters: Sequence[DeadLetter],
    offsets: Sequence[ConsumerOffset],
) -> AppendResult:
    """Append one batch atomically; if the database refuses it for its data, dead-letter what it refuses.

    Validation (events.codec) refuses what we know a database cannot hold, so this is the second line: a batch
    refused for a reason that is the data's (:class:`StoreRefusedError`, or a value that cannot be serialised)
    is searched for the events the database refuses (``SqlEventStore.refused_events``, a dry run); they become
    dead letters with the database's message and the rest is appended with the offsets, in one transaction.
    So one bad message can never stop ingestion. Only an unreachable store raises (``StoreUnavailableError``:
    the loop pauses and retries); a refusal that no single event explains is raised as one too, so ingestion
    pauses and logs it rather than skipping data.

    Args:
        records: the Kafka record each event came from, parallel to ``events`` (for its raw bytes).
    """
    try:
        return store.append(events, origins=origins, offsets=offsets, dead_letters=letters)
    except StoreUnavailableError:
        raise
    except (StoreRefusedError, TypeError, ValueError, UnicodeError) as exc:
        failure: Exception = exc
    except StoreError as exc:  # not the data's fault (e.g. a permission): pause and retry, loudly
        raise StoreUnavailableError(f"the store failed: {exc}; retrying") from exc
    refused = store.refused_events(events, origins)
    if not refused:
        raise StoreUnavailableError(
            f"the store refused a batch of {len(events)} events and {len(letters)} dead letters, and no single "
            f"event was to blame ({type(failure).__name__}: {str(failure)[:300]}); retrying"
        ) from failure
    dropped = {index for index, _ in refused}
    set_aside: list[DeadLetter] = []
    for index, message in refused:
        origin = origins[index]
        logger.error(
            "the store refused event %s from %s: %s; dead-lettered",
            events[index].event_id,
            origin,
            message,
            extra={"event_id": events[index].event_id, "origin": str(origin), "error_kind": STORE_REFUSED},
        )
        set_aside.append(refused_letter(records[index], origin, events[index].event_id, message))
    kept = [i for i in range(len(events)) if i not in dropped]
    try:
        return store.append(
            [events[i] for i in kept],
            origins=[origins[i] for i in kept],
            offsets=offsets,
            dead_letters=[*letters, *set_aside],
        )
    except StoreUnavailableError:
        raise
    except (StoreError, TypeError, ValueError, UnicodeError) as exc:  # refused again: pause and retry, loudly
        raise StoreUnavailableError(
            f"the store refused a batch again after setting {len(set_aside)} aside: {exc}"
        ) from exc


def refused_letter(record: KafkaRecord, origin: KafkaCoordinates | None, event_id: str, message: str) -> DeadLetter:
    """The dead letter of a valid-looking event the database refused, with the database's own words."""
    reason = (
        f"the database refused this event ({message}); it passed validation, so tell the alignd developers, "
        "then fix the producer and `alignd dlq requeue` it"
    )
    return DeadLetter(
        source_key=str(origin) if origin is not None else f"event:{event_id}",
        reason=reason,
        error_kind=STORE_REFUSED,
        value=record.value,
        key=record.key,
        headers=record_headers(record),
        origin=origin,
        event_id=event_id,
    )


@dataclass
class _Batch:
    """Records of one poll, decoded: what one store transaction appends."""

    polled: dict[TopicPartition, list[Any]]
    events: list[Event] = field(default_factory=list)
    origins: list[KafkaCoordinates | None] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    #: the Kafka record of each event (for a dead letter, should the database refuse the event)
    records: list[Any] = field(default_factory=list)
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    count: int = 0
    #: held spans, GenAI log records and an offsets probe for the OTLP join (consumers/otel_join.py)
    join: JoinInput = field(default_factory=JoinInput)
    #: spans the join brought out without an interaction (set by the writer)
    join_skipped: int = 0


class _Stopped(Exception):
    """Raised inside the loop when a stop is requested while the store is unavailable."""
