"""Prometheus counters of ingestion (exposed by the daemon's /metrics)."""

from __future__ import annotations

from prometheus_client import Counter


class _IngestMetrics:
    def __init__(self) -> None:
        self.records = Counter("alignd_ingest_records", "Kafka records consumed")
        self.appended = Counter("alignd_ingest_events_appended", "Events appended to the store")
        self.duplicates = Counter("alignd_ingest_duplicates", "Records ignored as duplicates by event_id")
        self.dead_letters = Counter("alignd_ingest_dead_letters", "Records sent to dead letters")
        self.store_retries = Counter("alignd_ingest_store_retries", "Store writes retried while it was unavailable")

    def observe(self, records: int, appended: int, duplicates: int, dead_letters: int) -> None:
        self.records.inc(records)
        self.appended.inc(appended)
        self.duplicates.inc(duplicates)
        self.dead_letters.inc(dead_letters)


INGEST_METRICS = _IngestMetrics()
