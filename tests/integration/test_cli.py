"""The CLI end to end against the real broker: ingest, events, dlq (with requeue), replay, config."""

from __future__ import annotations

import json

import pytest

from daemon.cli import main
from tests.helpers import feedback, interaction, produce, settings_env, unique_topics

pytestmark = pytest.mark.integration


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_ingest_inspect_requeue_and_replay(
    db_url: str, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    topics = unique_topics(kafka_bootstrap, partitions=1)
    env = settings_env(
        db_url, kafka_bootstrap, topics, ALIGND_INGEST_MAX_MESSAGE_BYTES="4096", ALIGND_LOG_LEVEL="WARNING"
    )
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    big = interaction("big", response="z" * 5000)  # over the 4 KiB limit, and no event_id
    produce(kafka_bootstrap, topics["interactions"], [interaction("r1", i=1), big, b"not json"])
    produce(kafka_bootstrap, topics["feedback"], [feedback("r1", "rating", 5)])

    code, out, _ = _run(["ingest", "--until-idle", "2", "--json"], capsys)
    assert code == 0 and json.loads(out) == {
        "records": 4,
        "appended": 2,
        "duplicates": 0,
        "dead_letters": 2,
        "batches": json.loads(out)["batches"],
        "store_retries": 0,
    }
    code, out, _ = _run(["events", "count", "--json"], capsys)
    assert json.loads(out) == {"total": 2, "by_type": {"feedback.received": 1, "interaction.logged": 1}}
    code, out, _ = _run(["events", "tail", "--type", "interaction.logged"], capsys)
    [line] = out.splitlines()
    assert json.loads(line)["payload"]["request_id"] == "r1"

    code, out, _ = _run(["dlq", "count", "--json"], capsys)
    assert json.loads(out) == {"total": 2, "by_kind": {"invalid_json": 1, "oversized": 1}}
    code, out, _ = _run(["dlq", "list", "--json", "--kind", "oversized"], capsys)
    [letter] = json.loads(out)
    assert "over the 4,096-byte limit" in letter["reason"] and letter["published_at"]
    original = letter["source"]

    code, _, err = _run(["dlq", "requeue"], capsys)
    assert code == 2 and "--id N" in err
    code, _, err = _run(["dlq", "requeue", "--id", "999"], capsys)
    assert code == 2 and "999" in err

    # the operator raises the limit, requeues the oversized message, and it is ingested
    monkeypatch.setenv("ALIGND_INGEST_MAX_MESSAGE_BYTES", "65536")
    code, out, _ = _run(["dlq", "requeue", "--id", str(letter["id"]), "--json"], capsys)
    assert code == 0 and json.loads(out)["requeued"] == [letter["id"]]
    code, out, _ = _run(["ingest", "--until-idle", "2", "--json"], capsys)
    assert json.loads(out)["appended"] == 1
    code, out, _ = _run(["events", "tail", "--type", "interaction.logged", "--lines", "5"], capsys)
    ids = {json.loads(line)["payload"]["request_id"]: json.loads(line)["event_id"] for line in out.splitlines()}
    assert ids["big"] == original  # the id it would have had the first time: a second requeue is a duplicate
    code, out, _ = _run(["dlq", "list", "--json", "--pending"], capsys)
    assert [x["error_kind"] for x in json.loads(out)] == ["invalid_json"]

    code, out, _ = _run(["replay", "--json"], capsys)
    digests = json.loads(out)
    assert set(digests) == {"interactions", "preference_pairs", "demonstrations", "feedback_stats", "quarantine"}
    assert digests["interactions"]["events"] == 3
    code, out, _ = _run(["replay", "--projection", "interactions", "--json"], capsys)
    assert json.loads(out)["interactions"]["digest"] == digests["interactions"]["digest"]
    code, _, err = _run(["replay", "--projection", "nope"], capsys)
    assert code == 2 and "unknown projection nope" in err


def test_config_show_masks_secrets_and_bad_settings_are_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    config = tmp_path / "alignd.yaml"
    config.write_text(
        "database:\n  url: postgresql+psycopg://alignd:s3cret@db/alignd\n"
        "kafka:\n  security_protocol: SASL_SSL\n  sasl_mechanism: SCRAM-SHA-512\n  sasl_username: svc\n"
        "  sasl_password: hunter2\n"
    )
    code, out, _ = _run(["--config", str(config), "config", "show", "--json"], capsys)
    shown = json.loads(out)
    assert code == 0 and "hunter2" not in out and "s3cret" not in out
    assert shown["kafka"]["sasl_password"] == "**********" and shown["kafka"]["sasl_username"] == "svc"

    monkeypatch.setenv("ALIGND_INGEST_MAX_POLL_RECORDS", "lots")
    code, _, err = _run(["--config", str(config), "config", "show"], capsys)
    assert code == 2 and "ALIGND_INGEST_MAX_POLL_RECORDS" in err and "hunter2" not in err


def test_unreachable_database_is_reported_with_what_to_check(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ALIGND_DATABASE_URL", "postgresql+psycopg://alignd:pw@127.0.0.1:1/alignd")
    code, _, err = _run(["events", "count"], capsys)
    assert code == 1 and "cannot reach the database" in err and "ALIGND_DATABASE_URL" in err and ":pw@" not in err
