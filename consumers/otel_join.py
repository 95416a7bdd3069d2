"""An LLM span and the log records that carry its content become one ``interaction.logged``: the join.

The OpenTelemetry GenAI instrumentations in their default mode send a call's prompt and response as log records
in the span's context (consumers/otlp_logs.py), and the Collector sends spans and logs to two topics. Nothing
orders the two: a span may come before or after its records, and each topic may be read by another replica of the
consumer group. So both halves wait in the store, in a table every replica shares (events/otel_join.py), until
they meet or until waiting longer would not help:

1. **Hold.** An LLM span without its content (``no_content`` on its own) is stored as a part ``span``; each GenAI
   log record in a span as a part ``log:<digest>``. Parts are stored, in a transaction of their own, *before* the
   append that moves the group's offsets past the records they came from: a crash before that append re-reads the
   records and stores the same parts again (the digest and the span's ids are the keys), so none is lost.
2. **Meet.** After storing a batch's parts, every call the batch touched is read back whole. A call is *complete*
   when its span is there and, with its log records, has both a prompt and a response to read (the
   instrumentations emit the input messages together when the request starts and the choices together when it
   ends, before the span ends). A complete call is mapped (consumers/otlp_genai.py reads the records as the span
   events they stand for) and its interaction appended with the batch. Reading back *after* the parts' own commit
   means that of two replicas storing the two halves at once, the later one to commit sees both: a call is never
   left waiting because each half was stored while the other was not yet visible.
3. **Time out, by offsets.** A part that has waited ``window_s`` gets a *deadline*: the end offsets, at that moment,
   of the other side's topics (for a span, the logs topics; for a log record, the spans topics). The part is due
   once the group's stored offsets (docs/store.md: what every replica has *stored*, not merely read) have reached its
   deadline: every record that reached the other topic within the window after the part was first seen has then
   been stored, so waiting longer cannot bring its other half, however far behind ingestion was (a backlog after
   downtime is read through first, not timed out against the wall clock). A due span is mapped with whatever
   records it has (none: it is skipped as ``no_content``, counted); a due call with records and no span (its span
   was not an LLM call, was mapped on its own, or was sampled out) is dropped and counted as ``orphaned``.
4. **Forget.** The parts of a call that came out (an event, a skip, a dead letter, an orphan) are deleted after the
   append that stored its outcome. A crash in between leaves them; they come out again into a duplicate (the
   event's id is the span's, docs/event-contract.md's idempotency), and are deleted then.

Restart: nothing of the join lives only in memory. The parts, their first-seen times and their deadlines are rows;
the offsets are the store's; a restarted (or another) replica finds every waiting call where it was.

What it cannot do: a record that reaches Kafka more than ``window_s`` after its other half was stored (a Collector
whose logs pipeline lags its traces pipeline by more) comes too late: the span was stored without it, or the record
is an orphan. Raise ``ingest.otlp_join_window_s`` above the lag between the two pipelines. Clocks: ``seen_ms`` is
the storing replica's clock and the window is compared with the clock of the replica that sets deadlines, so skew
between replicas shortens or lengthens the window by the skew.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson
from kafka.errors import KafkaError
from kafka.structs import TopicPartition

from consumers.otlp import OTLP_METRICS, OTLP_SPAN_INVALID, span_event_id, span_to_event
from consumers.otlp_genai import SpanEvent, SpanMappingError, SpanView, map_span, read_input, read_output
from consumers.otlp_logs import LogPart
from events.errors import EventValidationError
from events.model import DeadLetter, Event, KafkaCoordinates
from events.otel_join import SPAN_PART, JoinPart

logger = logging.getLogger(__name__)

Key = tuple[str, str]

#: Outcomes of log records in ``alignd_ingest_otlp_log_records_total``.
HELD, JOINED, ORPHANED = "held", "joined", "orphaned"


class JoinPartsStore(Protocol):
    """Where the parts wait (events/otel_join.py's ``SqlJoinParts``)."""

    def put(self, parts: Sequence[JoinPart], seen_ms: int) -> int: ...
    def load(self, keys: Iterable[Key]) -> list[JoinPart]: ...
    def set_deadlines(self, *, seen_before_ms: int, span_deadline: str, log_deadline: str) -> int: ...
    def keys_with_deadlines(self, limit: int) -> list[Key]: ...
    def forget(self, keys: Iterable[Key]) -> int: ...
    def load_offsets(self, group_id: str, partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]: ...


@dataclass(frozen=True)
class HeldSpan:
    """An LLM span without its content, and the Kafka record it came from."""

    span: SpanView
    origin: KafkaCoordinates


def span_to_json(held: HeldSpan) -> dict[str, Any]:
    s = held.span
    return {
        "trace_id": s.trace_id,
        "span_id": s.span_id,
        "parent_span_id": s.parent_span_id,
        "name": s.name,
        "start_ns": s.start_ns,
        "end_ns": s.end_ns,
        "attributes": dict(s.attributes),
        "events": [[e.name, dict(e.attributes)] for e in s.events],
        "status_code": s.status_code,
        "resource": dict(s.resource),
        "scope": s.scope,
        "origin": [held.origin.topic, held.origin.partition, held.origin.offset],
    }


def span_from_json(document: Mapping[str, Any]) -> HeldSpan:
    topic, partition, offset = document["origin"]
    span = SpanView(
        trace_id=document["trace_id"],
        span_id=document["span_id"],
        parent_span_id=document["parent_span_id"],
        name=document["name"],
        start_ns=document["start_ns"],
        end_ns=document["end_ns"],
        attributes=document["attributes"],
        events=tuple(SpanEvent(name, attributes) for name, attributes in document["events"]),
        status_code=document["status_code"],
        resource=document["resource"],
        scope=document["scope"],
    )
    return HeldSpan(span, KafkaCoordinates(topic, partition, offset))


def joined_span(span: SpanView, records: Sequence[LogPart]) -> SpanView:
    """The span with its log records as span events, in the order they were emitted."""
    ordered = sorted(records, key=lambda r: r.order)
    return replace(span, events=(*span.events, *(r.event for r in ordered)))


def is_complete(span: SpanView) -> bool:
    """Whether a (joined) span has both sides of the call to read; a malformed one is complete (it is dead-lettered
    now rather than waiting for the window)."""
    try:
        return read_input(span) is not None and read_output(span) is not None
    except SpanMappingError:
        return True


@dataclass(frozen=True)
class OffsetsProbe:
    """The end offsets of the OTLP topics, asked at ``observed_ms`` or later (a deadline's source)."""

    observed_ms: int
    span_ends: Mapping[str, Mapping[str, int]]
    log_ends: Mapping[str, Mapping[str, int]]


@dataclass
class JoinInput:
    """What one ingest batch brings to the join: held spans, GenAI log records, and maybe a probe."""

    spans: list[HeldSpan] = field(default_factory=list)
    logs: list[LogPart] = field(default_factory=list)
    probe: OffsetsProbe | None = None

    def __bool__(self) -> bool:
        return bool(self.spans or self.logs or self.probe)


@dataclass(frozen=True)
class JoinedRecord:
    """Stands for the Kafka record of a joined interaction (for a dead letter, should the database refuse it)."""

    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class JoinOutcome:
    """What came out of the join for one batch: appended with it, then its calls' parts are forgotten."""

    events: list[Event] = field(default_factory=list)
    origins: list[KafkaCoordinates | None] = field(default_factory=list)
    records: list[Any] = field(default_factory=list)
    letters: list[DeadLetter] = field(default_factory=list)
    finished: set[Key] = field(default_factory=set)
    #: spans that came out without an interaction, by reason (consumers/otlp_genai.py's SKIP_REASONS)
    skipped: Tally[str] = field(default_factory=Tally)
    joined_records: int = 0
    orphaned_records: int = 0


def _satisfied(deadline: str | None, offsets: Mapping[tuple[str, int], int]) -> bool:
    if deadline is None:
        return False
    ends: dict[str, dict[str, int]] = orjson.loads(deadline)
    return all(offsets.get((topic, int(p)), 0) >= end for topic, by_p in ends.items() for p, end in by_p.items())


def _deadline_partitions(parts: Iterable[JoinPart]) -> set[tuple[str, int]]:
    found: set[tuple[str, int]] = set()
    for part in parts:
        if part.deadline is not None:
            for topic, by_p in orjson.loads(part.deadline).items():
                found.update((topic, int(p)) for p in by_p)
    return found


class OtelJoin:
    """Joins held LLM spans with their GenAI log records (the module docstring says how and why).

    :meth:`probe` runs on the ingest loop's thread (it asks the consumer for end offsets); :meth:`process` and
    :meth:`settle` on the store writer's, around the batch's append.

    Args:
        parts: where the parts wait.
        group_id: the consumer group whose stored offsets say how far each topic has been stored.
        span_topics, log_topics: the OTLP traces and logs topics.
        window_s: how long a part waits for its other half before it gets a deadline.
        clock: wall-clock seconds (``seen_ms`` and deadlines; shared by replicas).
        probe_every_s: how often end offsets are asked for (default: a quarter of the window, 0.25 s to 5 s).
        max_due: calls timed out per pass at most (the rest on the next pass).
    """

    def __init__(
        self,
        parts: JoinPartsStore,
        *,
        group_id: str,
        span_topics: Sequence[str],
        log_topics: Sequence[str],
        window_s: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        probe_every_s: float | None = None,
        max_due: int = 1000,
    ) -> None:
        self.parts = parts
        self.group_id = group_id
        self.span_topics = tuple(span_topics)
        self.log_topics = tuple(log_topics)
        self.window_ms = int(window_s * 1000)
        self.clock = clock
        self.monotonic = monotonic
        self.probe_every_s = probe_every_s if probe_every_s is not None else min(max(window_s / 4, 0.25), 5.0)
        self.max_due = max_due
        self._last_probe: float | None = None

    # --- the loop's thread ---------------------------------------------------------------------------------

    def probe(self, consumer: Any) -> OffsetsProbe | None:
        """The end offsets of the OTLP topics, at most every ``probe_every_s``; None when not due or not known.

        Asked of the group's consumer, and only while it has partitions assigned: the topics it subscribes to are
        then in its metadata cache, so ``partitions_for_topic`` reads the cache instead of fetching every topic's
        metadata in the middle of a group join; ``end_offsets`` is one ListOffsets request.
        """
        now = self.monotonic()
        if self._last_probe is not None and now - self._last_probe < self.probe_every_s:
            return None
        if not consumer.assignment():
            return None
        self._last_probe = now
        observed_ms = int(self.clock() * 1000)  # before asking: the offsets answered are at least those of then
        try:
            ends: dict[str, dict[str, int]] = {}
            wanted: list[TopicPartition] = []
            for topic in (*self.span_topics, *self.log_topics):
                partitions = consumer.partitions_for_topic(topic)
                if not partitions:
                    return None  # metadata not known yet: a deadline must cover every partition
                wanted.extend(TopicPartition(topic, p) for p in partitions)
            for tp, end in consumer.end_offsets(wanted).items():
                ends.setdefault(tp.topic, {})[str(tp.partition)] = int(end)
        except KafkaError as exc:
            logger.warning("OTLP join: cannot read the end offsets of the OTLP topics (%s); retried", exc)
            return None
        return OffsetsProbe(
            observed_ms,
            {t: ends.get(t, {}) for t in self.span_topics},
            {t: ends.get(t, {}) for t in self.log_topics},
        )

    # --- the writer's thread -------------------------------------------------------------------------------

    def process(self, given: JoinInput) -> JoinOutcome:
        """Store the batch's parts, then bring out every call that is complete or due (appended by the caller).

        Raises:
            StoreUnavailableError: the store could not be reached; nothing came out (the caller retries).
        """
        stored = [
            JoinPart(h.span.trace_id, h.span.span_id, SPAN_PART, orjson.dumps(span_to_json(h)).decode())
            for h in given.spans
        ] + [JoinPart(r.trace_id, r.span_id, f"log:{r.key}", orjson.dumps(r.to_json()).decode()) for r in given.logs]
        self.parts.put(stored, int(self.clock() * 1000))
        keys = {part.key for part in stored}
        if given.probe is not None:
            probe = given.probe
            self.parts.set_deadlines(
                seen_before_ms=probe.observed_ms - self.window_ms,
                span_deadline=orjson.dumps(probe.log_ends, option=orjson.OPT_SORT_KEYS).decode(),
                log_deadline=orjson.dumps(probe.span_ends, option=orjson.OPT_SORT_KEYS).decode(),
            )
            keys.update(self.parts.keys_with_deadlines(self.max_due))
        loaded = self.parts.load(keys)
        partitions = _deadline_partitions(loaded)
        offsets = self.parts.load_offsets(self.group_id, partitions) if partitions else {}
        by_key: dict[Key, list[JoinPart]] = defaultdict(list)
        for part in loaded:
            by_key[part.key].append(part)
        outcome = JoinOutcome()
        for key, parts in by_key.items():
            self._bring_out(key, parts, offsets, outcome)
        return outcome

    def _bring_out(
        self, key: Key, parts: list[JoinPart], offsets: Mapping[tuple[str, int], int], outcome: JoinOutcome
    ) -> None:
        span_part = next((p for p in parts if p.part == SPAN_PART), None)
        log_parts = [p for p in parts if p.part != SPAN_PART]
        if span_part is None:
            if any(_satisfied(p.deadline, offsets) for p in log_parts):
                outcome.finished.add(key)
                outcome.orphaned_records += len(log_parts)
            return
        held = span_from_json(orjson.loads(span_part.body))
        records = [LogPart.from_json(key[0], key[1], orjson.loads(p.body)) for p in log_parts]
        span = joined_span(held.span, records)
        if not is_complete(span) and not _satisfied(span_part.deadline, offsets):
            return
        outcome.finished.add(key)
        outcome.joined_records += len(records)
        try:
            mapped = map_span(span)
            if mapped.payload is None:
                outcome.skipped[mapped.skipped or "no_content"] += 1
                return
            mapped.payload["metadata"]["otel"]["log_records"] = len(records)
            event = span_to_event(span, mapped.payload)
        except (SpanMappingError, EventValidationError) as exc:
            outcome.letters.append(self._letter(held, records, exc))
            return
        outcome.events.append(event)
        outcome.origins.append(held.origin)
        outcome.records.append(
            JoinedRecord(held.origin.topic, held.origin.partition, held.origin.offset, _document(held, records))
        )

    def _letter(self, held: HeldSpan, records: Sequence[LogPart], exc: Exception) -> DeadLetter:
        span = held.span
        detail = exc.reason if isinstance(exc, EventValidationError) else str(exc)
        reason = (
            f"OTLP span joined with its {len(records)} log records: span {span.name!r} ({span.trace_id}:"
            f"{span.span_id}), from {held.origin}: {detail}. The message holds the span and its records as JSON; "
            "it is not requeued (its parts came from two topics): fix the instrumentation"
        )
        return DeadLetter(
            source_key=f"otel-join:{span.trace_id}:{span.span_id}",
            reason=reason,
            error_kind=OTLP_SPAN_INVALID,
            value=_document(held, records),
            event_id=span_event_id(span.trace_id, span.span_id),
        )

    def settle(self, outcome: JoinOutcome) -> None:
        """After the append that stored ``outcome``: forget its calls' parts, and count."""
        if outcome.finished:
            self.parts.forget(outcome.finished)
        OTLP_METRICS.mapped.inc(len(outcome.events))
        OTLP_METRICS.observe_skipped(outcome.skipped)
        if outcome.joined_records:
            OTLP_METRICS.log_records.labels(JOINED).inc(outcome.joined_records)
        if outcome.orphaned_records:
            OTLP_METRICS.log_records.labels(ORPHANED).inc(outcome.orphaned_records)
            logger.info(
                "OTLP join: %d GenAI log records had no LLM span within the join window and were dropped "
                '(alignd_ingest_otlp_log_records_total{outcome="orphaned"})',
                outcome.orphaned_records,
            )


def _document(held: HeldSpan, records: Sequence[LogPart]) -> bytes:
    return orjson.dumps({"span": span_to_json(held), "log_records": [r.to_json() for r in records]})
