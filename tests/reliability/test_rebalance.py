"""Two consumers in one group share the partitions; rebalances in the middle lose and duplicate nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import pytest
from sqlalchemy import text

from events.sql_store import SqlEventStore
from tests.helpers import alignd, interaction, produce, settings_env, unique_topics, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.slow]


def _assigned(log: bytes) -> list[str]:
    found = []
    for line in log.decode(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("message", "").startswith("partitions assigned:"):
            found.append(entry["message"])
    return found


def test_two_consumers_share_partitions_and_a_rebalance_loses_nothing(
    db_url: str, kafka_bootstrap: str, tmp_path
) -> None:
    topics = unique_topics(kafka_bootstrap, partitions=4)
    total = 12_000
    messages = [interaction(f"r{i}", event_id=f"e{i}", i=i) for i in range(total)]
    produce(kafka_bootstrap, topics["interactions"], messages[:3000])
    env = settings_env(db_url, kafka_bootstrap, topics, ALIGND_INGEST_MAX_POLL_RECORDS="100", ALIGND_LOG_FORMAT="json")
    store = SqlEventStore.from_url(db_url)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    # keep producing while the group rebalances
    producer = threading.Thread(
        target=lambda: [
            produce(kafka_bootstrap, topics["interactions"], messages[k : k + 1500]) or time.sleep(0.3)
            for k in range(3000, total, 1500)
        ]
    )
    children: list[subprocess.Popen[bytes]] = []
    try:
        with logs[0].open("wb") as log_a, logs[1].open("wb") as log_b:
            first = alignd(["ingest", "--no-project"], env, stderr=log_a)
            children.append(first)
            wait_until(lambda: store.count() >= 500, timeout=60, interval=0.05, message="first consumer progress")
            producer.start()
            second = alignd(["ingest", "--no-project"], env, stderr=log_b)
            children.append(second)
            wait_until(
                lambda: bool(_assigned(logs[1].read_bytes())),
                timeout=60,
                interval=0.1,
                message="second consumer assigned",
            )
            producer.join()
            time.sleep(1.0)
            first.send_signal(signal.SIGTERM)  # another rebalance: the second takes every partition
            assert first.wait(60) == 0, logs[0].read_text(errors="replace")[-3000:]
            wait_until(lambda: store.count() >= total, timeout=120, interval=0.1, message="all events stored")
            second.send_signal(signal.SIGTERM)
            assert second.wait(60) == 0, logs[1].read_text(errors="replace")[-3000:]

        a_assigned, b_assigned = _assigned(logs[0].read_bytes()), _assigned(logs[1].read_bytes())
        b_first = b_assigned[0]
        a_after = [m for m in a_assigned[1:]]  # the first's assignment after the second joined
        assert a_after, "the first consumer was never rebalanced"
        shared_a = set(a_after[0].split(": ", 1)[1].split(", "))
        shared_b = set(b_first.split(": ", 1)[1].split(", "))
        assert shared_a and shared_b and not (shared_a & shared_b), (a_after, b_first)
        assert len(shared_a | shared_b) == 8  # 4 partitions of each inbound topic

        with store.engine.connect() as conn:
            ids = [r[0] for r in conn.execute(text("SELECT event_id FROM events"))]
        assert len(ids) == len(set(ids)) == total
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait(10)
        store.dispose()
