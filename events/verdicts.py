"""Reviewers' verdicts on alerts, and the labelled examples they make (docs/monitors.md#verdicts).

An ``alert.reviewed`` event says an alert was a true or a false positive. The latest verdict on an alert stands
(a reviewer may change their mind; every verdict stays in the audit trail). A verdict on an alert about an
interaction (the jailbreak detectors' ``event:<id>`` subjects and evidence) labels that interaction's prompt (and
response) for the detector: a true positive is an example of what it should flag, a false positive of what it
should not. The detector trainer reads these next to its authored data.

The poisoning guard is the one feedback has (docs/feedback-contracts.md): a verdict whose event is quarantined,
or whose reviewer is a quarantined user id, is left out of the examples (``alignd quarantine add --user ana`` or
``--event <verdict id>``), and a verdict from a quarantined reviewer is still shown by :func:`latest_verdicts`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from events.dataset_stats import quarantine_entries
from events.model import StoredEvent, user_prompt
from events.names import ALERT_REVIEWED, ANOMALY_DETECTED, INTERACTION_LOGGED, TRUE_POSITIVE
from events.sql_store import SqlEventStore
from events.store import EventStore

#: The detectors whose verdicts label prompts for the jailbreak-attempt classifier (``alignd train detector``).
JAILBREAK_ATTEMPT = "jailbreak_attempt"
JAILBREAK_SUCCESS = "jailbreak_success"

#: At most this many interactions of one alert's evidence become examples: an alert about a window (a spike of
#: flags) names many, and one verdict should not outweigh the rest of the training set.
MAX_EXAMPLES_PER_ALERT = 5


@dataclass(frozen=True)
class Verdict:
    """The verdict standing on one alert: the latest ``alert.reviewed`` about it."""

    alert_id: str
    detector: str
    verdict: str
    actor: str
    reason: str
    event_id: str
    seq: int
    occurred_at: datetime
    reviews: int  # how many verdicts the alert has had, this one included

    @property
    def true_positive(self) -> bool:
        return self.verdict == TRUE_POSITIVE


@dataclass(frozen=True)
class LabelledExample:
    """An interaction labelled by a verdict: ``label`` 1 for an alert that was right (an attack, a harmful
    answer), 0 for a false alarm."""

    prompt: str
    response: str | None
    label: int
    detector: str
    alert_id: str
    interaction_id: str
    verdict_event_id: str
    actor: str
    seq: int = 0  # the verdict's


def _reviews(store: EventStore, page: int = 1000, upto_seq: int | None = None) -> Iterator[StoredEvent]:
    after = 0
    while True:
        batch = store.read(after, limit=page, types=[ALERT_REVIEWED])
        for stored in batch:
            if upto_seq is not None and stored.seq > upto_seq:
                return
            yield stored
        if len(batch) < page:
            return
        after = batch[-1].seq


def latest_verdicts(
    store: EventStore, detector: str | None = None, *, upto_seq: int | None = None
) -> dict[str, Verdict]:
    """The standing verdict of every reviewed alert (of ``detector``, when given), keyed by alert id, in the
    order of their latest review; with ``upto_seq``, as it stood at that seq."""
    standing: dict[str, Verdict] = {}
    for stored in _reviews(store, upto_seq=upto_seq):
        p = stored.event.payload
        if detector is not None and p.get("detector") != detector:
            continue
        alert_id = str(p["alert_id"])
        previous = standing.pop(alert_id, None)
        standing[alert_id] = Verdict(
            alert_id=alert_id,
            detector=str(p["detector"]),
            verdict=str(p["verdict"]),
            actor=str(p["actor"]),
            reason=str(p.get("reason", "")),
            event_id=stored.event.event_id,
            seq=stored.seq,
            occurred_at=stored.event.occurred_at,
            reviews=(previous.reviews if previous else 0) + 1,
        )
    return standing


def _about(alert: StoredEvent) -> list[str]:
    """The event ids an alert is about: its ``event:<id>`` subject first, then its evidence, each once."""
    payload = alert.event.payload
    subject = str(payload.get("subject", ""))
    ids = [subject.removeprefix("event:")] if subject.startswith("event:") else []
    evidence = payload.get("evidence")
    if isinstance(evidence, list):
        ids.extend(e for e in evidence if isinstance(e, str))
    return list(dict.fromkeys(ids))


def _interactions(store: EventStore, ids: Iterable[str]) -> Iterator[StoredEvent]:
    for event_id in ids:
        stored = store.get(event_id)
        if stored is not None and stored.event.type == INTERACTION_LOGGED:
            yield stored


def verdict_examples(
    store: SqlEventStore, detector: str, *, upto_seq: int | None = None, quarantine: bool = True
) -> list[LabelledExample]:
    """The interactions the standing verdicts on ``detector``'s alerts label, quarantined verdicts and reviewers
    left out (unless ``quarantine`` is false), in the order of the verdicts; an interaction labelled by two alerts
    counts once (the later verdict's label). With ``upto_seq``, the verdicts as they stood at that seq."""
    quarantined = {(e.kind, e.subject) for e in quarantine_entries(store)} if quarantine else set()
    examples: dict[str, LabelledExample] = {}
    for verdict in latest_verdicts(store, detector, upto_seq=upto_seq).values():
        if ("event", verdict.event_id) in quarantined or ("user", verdict.actor) in quarantined:
            continue
        alert = store.get(verdict.alert_id)
        if alert is None or alert.event.type != ANOMALY_DETECTED:
            continue
        kept = 0
        for interaction in _interactions(store, _about(alert)):
            prompt = user_prompt(interaction.event.payload)
            if prompt is None:
                continue
            response = interaction.event.payload.get("response")
            event_id = interaction.event.event_id
            examples.pop(event_id, None)
            examples[event_id] = LabelledExample(
                prompt=prompt,
                response=response if isinstance(response, str) else None,
                label=1 if verdict.true_positive else 0,
                detector=verdict.detector,
                alert_id=verdict.alert_id,
                interaction_id=event_id,
                verdict_event_id=verdict.event_id,
                actor=verdict.actor,
                seq=verdict.seq,
            )
            kept += 1
            if kept == MAX_EXAMPLES_PER_ALERT:
                break
    return list(examples.values())


def attempt_examples(
    store: SqlEventStore, *, upto_seq: int | None = None, quarantine: bool = True
) -> list[LabelledExample]:
    """Prompts labelled for the jailbreak-attempt classifier, in verdict order: a true positive of
    ``jailbreak_attempt`` or ``jailbreak_success`` says the prompt was an attack, a false positive of
    ``jailbreak_attempt`` that it was not. A false positive of ``jailbreak_success`` labels nothing: it may only
    mean the answer was harmless. Where verdicts on two alerts label one interaction, the later one stands."""
    attempts = verdict_examples(store, JAILBREAK_ATTEMPT, upto_seq=upto_seq, quarantine=quarantine)
    successes = [
        e for e in verdict_examples(store, JAILBREAK_SUCCESS, upto_seq=upto_seq, quarantine=quarantine) if e.label == 1
    ]
    latest: dict[str, LabelledExample] = {}
    for example in sorted([*attempts, *successes], key=lambda e: e.seq):
        latest.pop(example.interaction_id, None)
        latest[example.interaction_id] = example
    return list(latest.values())


def attempt_example_counts(store: SqlEventStore) -> dict[str, tuple[int, int]]:
    """The classifier's labelled interactions by label (``attack``, ``false_alarm``): (kept, left out by the
    quarantine of a verdict or a reviewer), for ``alignd datasets``."""
    names = {1: "attack", 0: "false_alarm"}
    kept = Counter(names[e.label] for e in attempt_examples(store))
    every = Counter(names[e.label] for e in attempt_examples(store, quarantine=False))
    return {label: (kept[label], max(0, every[label] - kept[label])) for label in sorted(every)}
