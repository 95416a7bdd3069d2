"""Property-based test (Hypothesis): whatever the decoder accepts, however odd (huge numbers, control characters,
edge dates, deep metadata, empty strings), the projections and every light detector take without raising.
A detector that raised on an event would stop the monitor role at that event on every restart."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings

from consumers.decode import decode_record
from daemon.bootstrap import build_detectors
from daemon.settings import load_settings
from events.model import Event
from events.projections import ProjectionRunner
from events.sql_store import SqlEventStore
from monitors.runner import MonitorRunner
from tests.hostile import odd_valid_envelopes
from tests.unit.test_decode import FakeRecord

from .test_review_page import migrated_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_offsets = itertools.count()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqlEventStore]:
    store = migrated_store(tmp_path / "events.db")
    yield store
    store.dispose()


@pytest.fixture(scope="module")
def detectors() -> list:
    # Every light detector; jailbreak similarity without the MiniLM embedder (its text path is what is tested).
    return build_detectors(load_settings(env={"ALIGND_MONITORS_EMBEDDINGS": "false"}))


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(raw=odd_valid_envelopes())
def test_accepted_events_go_through_projections_and_detectors(
    sqlite_store: SqlEventStore, detectors: list, raw: bytes
) -> None:
    decoded = decode_record(FakeRecord("t", 0, next(_offsets), raw))
    assume(isinstance(decoded, Event))
    sqlite_store.append([decoded])
    ProjectionRunner(sqlite_store).catch_up()
    MonitorRunner(sqlite_store, detectors).catch_up()
