"""PostgreSQL stopped and started during ingestion: consumption pauses, retries, resumes, loses nothing."""

from __future__ import annotations

import threading
import time

import pytest

from daemon.bootstrap import build_ingestor, open_store
from events.sql_store import create_store_engine
from migrations.runner import upgrade
from tests.helpers import interaction, produce, settings_for, unique_topics, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.slow]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart_during_ingestion_loses_nothing(mode: str, kafka_bootstrap: str, tmp_path) -> None:
    from daemon.local.postgres import LocalPostgres

    pg = LocalPostgres(tmp_path / "pgdata").start()
    try:
        url = pg.create_database("outage")
        engine = create_store_engine(url)
        upgrade(engine)
        engine.dispose()
        topics = unique_topics(kafka_bootstrap, partitions=2)
        total = 8000
        messages = [interaction(f"r{i}", event_id=f"e{i}", i=i) for i in range(total)]
        produce(kafka_bootstrap, topics["interactions"], messages[:2000])
        settings = settings_for(
            url,
            kafka_bootstrap,
            topics,
            ALIGND_INGEST_MAX_POLL_RECORDS="200",
            ALIGND_INGEST_RETRY_INITIAL_S="0.2",
            ALIGND_INGEST_RETRY_MAX_S="1",
        )
        store = open_store(settings)
        ingestor = build_ingestor(settings, store, project=False)
        runner = threading.Thread(target=lambda: ingestor.run())
        runner.start()
        wait_until(lambda: ingestor.stats.appended >= 1000, timeout=60, message="progress before the outage")
        pg.stop(mode)
        produce(kafka_bootstrap, topics["interactions"], messages[2000:])  # traffic keeps coming meanwhile
        time.sleep(4)
        assert ingestor.stats.store_retries > 0
        pg.start()
        wait_until(
            lambda: ingestor.stats.records >= total, timeout=120, interval=0.2, message="ingestion resumed to the end"
        )
        ingestor.stop()
        runner.join(30)
        assert not runner.is_alive()
        # a commit whose acknowledgement was lost in the crash is retried: then it counts as duplicates
        assert store.count() == total
        assert ingestor.stats.appended + ingestor.stats.duplicates == ingestor.stats.records
        ingestor.publisher.producer.close(5)
        store.dispose()
    finally:
        pg.stop("fast")
