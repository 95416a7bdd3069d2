"""docs/feedback-contracts.md cannot drift: every JSON example on it is decoded by the ingest decoder, and folded
through the projections to check what the page says each kind becomes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from events.codec import decode_inbound
from events.memory_store import InMemoryEventStore
from events.model import Event
from events.projections import ProjectionRunner
from events.tables import proj_demonstrations, proj_interactions, proj_preference_pairs

from ..helpers import REPO

DOC = REPO / "docs" / "feedback-contracts.md"
_BLOCK = re.compile(r"^```json\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _examples() -> list[str]:
    return _BLOCK.findall(DOC.read_text(encoding="utf-8"))


def _decoded() -> list[Event]:
    return [
        decode_inbound(block.encode("utf-8"), fallback_event_id=f"doc:0:{n}") for n, block in enumerate(_examples())
    ]


@pytest.mark.parametrize("block", _examples(), ids=lambda block: str(json.loads(block).get("event_id")))
def test_every_example_is_a_valid_envelope(block: str) -> None:
    event = decode_inbound(block.encode("utf-8"), fallback_event_id="doc:0:0")
    assert event.event_id == json.loads(block)["event_id"]  # each example names its id: the text refers to it


def test_the_page_has_an_example_of_each_contract() -> None:
    events = _decoded()
    kinds = [e.payload.get("kind") for e in events if e.type == "feedback.received"]
    signals = {e.payload["value"]["name"] for e in events if e.payload.get("kind") == "signal"}
    assert [e.type for e in events].count("interaction.logged") == 1
    assert {"preference", "correction", "rating", "signal"} <= set(kinds)
    assert {"regenerated", "copied", "edited", "abandoned"} <= signals


def _rows(store: InMemoryEventStore, table: Any) -> dict[str, dict[str, Any]]:
    key = next(iter(table.primary_key.columns)).name
    return {row[key]: row for row in store.table_rows(table)}


def test_what_each_example_becomes_is_what_the_page_says() -> None:
    events = _decoded()
    [logged] = [e for e in events if e.type == "interaction.logged"]
    by_kind = {e.payload["kind"]: e for e in events if e.type == "feedback.received"}
    preference, correction, rating = by_kind["preference"], by_kind["correction"], by_kind["rating"]
    store = InMemoryEventStore()
    store.append(events)
    ProjectionRunner(store).catch_up()

    pairs = _rows(store, proj_preference_pairs)
    assert set(pairs) == {preference.event_id, correction.event_id}
    pair = pairs[preference.event_id]
    # chosen and rejected are the texts sent, tied to the interaction's prompt; its logged response is not used
    assert (pair["prompt"], pair["chosen"], pair["rejected"]) == (
        logged.payload["prompt"],
        preference.payload["value"]["chosen"],
        preference.payload["value"]["rejected"],
    )
    assert logged.payload["response"] not in (pair["chosen"], pair["rejected"])
    assert (pair["origin"], pair["user_id"], pair["model_version"]) == (
        "preference",
        preference.payload["user"],
        logged.payload["model"]["version"],
    )
    fixed = pairs[correction.event_id]
    assert (fixed["origin"], fixed["chosen"], fixed["rejected"]) == (
        "correction",
        correction.payload["value"]["response"],
        logged.payload["response"],
    )

    demos = _rows(store, proj_demonstrations)
    top = f"top_rated:{logged.payload['request_id']}"
    assert rating.payload["value"] == 5 and set(demos) == {correction.event_id, top}
    assert demos[correction.event_id]["response"] == correction.payload["value"]["response"]
    assert (demos[top]["response"], demos[top]["feedback_event_id"]) == (logged.payload["response"], rating.event_id)

    [row] = store.table_rows(proj_interactions)
    signals = [e for e in events if e.payload.get("kind") == "signal"]
    assert row["signals"] == len(signals) and (row["rating_count"], row["rating_sum"]) == (1, 5)
