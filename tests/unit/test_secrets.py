"""Secrets never shown in clear: URL masking (events.redact), free-text scrubbing, the settings as shown by
``config show``, log lines, and the CLI's error messages (issue 19, "Secrets")."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon import logs
from daemon.cli import main
from daemon.settings import load_settings
from daemon.supervisor import Supervisor
from events.errors import ConfigurationError
from events.redact import (
    MASK,
    Scrubber,
    is_secret_name,
    mask_secrets_in_text,
    mask_url,
    mask_url_list,
    url_secrets,
    without_credentials,
)

# --- mask_url ---------------------------------------------------------------------------------------------

MASKED = [
    # user-info: the password goes, the user name stays
    (
        "postgresql+psycopg://alignd:hunter2@db.example:5432/alignd",
        "postgresql+psycopg://alignd:***@db.example:5432/alignd",
    ),
    ("http://user:pw@mlflow:5000", "http://user:***@mlflow:5000"),
    ("postgresql://u:pw@db/mlflow", "postgresql://u:***@db/mlflow"),
    ("postgresql://u:p%40ss@db/mlflow", "postgresql://u:***@db/mlflow"),
    ("postgresql://:pw@db/x", "postgresql://:***@db/x"),
    ("postgresql://u:p@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
    ("http://u:pw@[::1]:5000/x", "http://u:***@[::1]:5000/x"),
    ("SASL_SSL://svc:pw@broker:9096", "SASL_SSL://svc:***@broker:9096"),
    ("svc:pw@broker:9096", "svc:***@broker:9096"),
    # query parameters named like secrets, any case, also inside options=
    ("postgresql+psycopg://u@h/db?password=hunter2", "postgresql+psycopg://u@h/db?password=***"),
    (
        "postgresql://u@h/db?sslmode=require&PassWord=x&application_name=a",
        "postgresql://u@h/db?sslmode=require&PassWord=***&application_name=a",
    ),
    ("postgresql://u@h/db?sslpassword=x&sslkey=/k.pem", "postgresql://u@h/db?sslpassword=***&sslkey=/k.pem"),
    ("http://mlflow:5000/?token=abc", "http://mlflow:5000/?token=***"),
    (
        "https://h/p?access_token=a&api_key=b&apikey=c&key=d&client_secret=e&sig=f&credentials=g",
        "https://h/p?access_token=***&api_key=***&apikey=***&key=***&client_secret=***&sig=***&credentials=***",
    ),
    (
        "https://b.s3.amazonaws.com/o?X-Amz-Credential=c&X-Amz-Signature=s&X-Amz-Security-Token=t&X-Amz-Expires=60",
        "https://b.s3.amazonaws.com/o?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***&X-Amz-Expires=60",
    ),
    ("postgresql://h/db?options=-c%20password%3Dx", "postgresql://h/db?options=***"),
    ("postgresql://h/db?options=-csearch_path%3Dalignd", "postgresql://h/db?options=-csearch_path%3Dalignd"),
    ("postgresql://u@h/db?password=ab&cd&sslmode=require", "postgresql://u@h/db?password=***&***&sslmode=require"),
    ("https://ui.example/#access_token=xyz", "https://ui.example/#access_token=***"),
    ("dbfs:/x?token=abc", "dbfs:/x?token=***"),
    # malformed: all of it after the scheme
    ("postgresql://u:p@w@db/alignd", "postgresql://***"),
    ("postgresql://u:pa/ss@db/alignd", "postgresql://***"),
    ("postgresql://u:12/ss@db/alignd", "postgresql://***"),
    ("postgresql://u:pa?ss@db/alignd", "postgresql://***"),
    ("postgresql://u:pa#ss@db/alignd", "postgresql://***"),
    ("postgresql://u:p@[db/alignd", "postgresql://***"),
    ("postgresql://u:p@db]/alignd", "postgresql://***"),
    ("postgresql://u:p@db:54x2/alignd", "postgresql://***"),
    ("postgresql://u:p w@db/alignd", "postgresql://***"),
    ("postgresql://u:p\n@db/alignd", "postgresql://***"),
    ("http://u:p\x00@h", "http://***"),
    ("http://h:5000/x@y", "http://***"),
    ("svc:p@w@broker:9096", "***@broker:9096"),
]

UNCHANGED = [
    "sqlite:///alignd.db",
    "sqlite:////var/lib/alignd/alignd.db",
    "sqlite://",
    "sqlite:///file:mem?mode=memory&uri=true",
    "postgresql+psycopg://alignd@db.example:5432/alignd",
    "postgresql://u@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem&connect_timeout=5&application_name=alignd",
    "http://mlflow:5000",
    "https://mlflow.example.com/path/?tab=runs",
    "http://[::1]:5000/",
    "databricks",
    "databricks://profile",
    "databricks://scope:prefix",
    "databricks-uc",
    "file:///tmp/mlartifacts",
    "/tmp/mlruns",
    "./mlruns",
    "mlruns",
    "C:\\mlruns",
    "s3://bucket/prefix/artifacts",
    "gs://bucket/x",
    "wasbs://container@account.blob.core.windows.net/path",
    "dbfs:/databricks/mlflow",
    "127.0.0.1:9092",
    "b-1.example:9096",
    "https://mastodon.social/@alignd",
    "http://h:5000/x?email=a@b.example",
    "https://h/x?max_tokens=256&tokenizer=gpt2&monkey=1",
    "",
]


@pytest.mark.parametrize(("url", "masked"), MASKED)
def test_mask_url_hides_passwords_secret_parameters_and_malformed_urls(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize("url", UNCHANGED)
def test_mask_url_leaves_urls_and_paths_without_secrets_as_they_are(url: str) -> None:
    assert mask_url(url) == url
    assert url_secrets(url) == []


@pytest.mark.parametrize(
    ("url", "link"),
    [
        ("https://viewer:pw@mlflow.example/", "https://mlflow.example/"),
        ("https://mlflow.example:5000/x?token=a&tab=runs", "https://mlflow.example:5000/x?tab=runs"),
        ("http://mlflow:5000", "http://mlflow:5000"),
        ("https://u:p@w@mlflow.example/", None),
    ],
)
def test_without_credentials_gives_a_link_a_browser_may_have(url: str, link: str | None) -> None:
    assert without_credentials(url) == link


def test_mask_url_list_masks_each_server() -> None:
    assert mask_url_list("b-1:9096,svc:pw@b-2:9096") == "b-1:9096,svc:***@b-2:9096"


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("postgresql://u:p%40ss@h/db", {"p%40ss", "p@ss"}),
        ("postgresql://u@h/db?password=x%20y&sslmode=require", {"x%20y", "x y"}),
        ("postgresql://u@h/db?password=ab&cd&sslmode=require", {"ab&cd"}),
        ("http://h/?token=tok#frag", {"tok#frag", "tok"}),
    ],
)
def test_url_secrets_lists_each_value_as_written_and_decoded(url: str, secrets: set[str]) -> None:
    assert secrets <= set(url_secrets(url))


def test_url_secrets_of_a_malformed_url_cover_every_reading_of_it() -> None:
    found = url_secrets("postgresql://u:PLANTED-a@b@h/db")
    # SQLAlchemy reads the password as "PLANTED-a", a URL parser as "PLANTED-a@b": both are searched for.
    assert "PLANTED-a" in found and "PLANTED-a@b" in found


@pytest.mark.parametrize(
    "name", ["password", "PASSWORD", "sslpassword", "sasl_password", "passwd", "pwd", "token", "access_token",
             "api_key", "api-key", "apikey", "key", "secret", "client_secret", "signature", "sig", "credential",
             "credentials", "auth", "Authorization", "X-Amz-Security-Token", "pass%77ord"],
)  # fmt: skip
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name", ["user", "sslmode", "sslkey", "host", "max_tokens", "tokenizer", "application_name", "monkey", "keys"]
)
def test_names_that_are_not_secret(name: str) -> None:
    assert not is_secret_name(name)


# --- free text --------------------------------------------------------------------------------------------


def test_known_secrets_are_masked_in_every_form_text_may_hold_them() -> None:
    secret = 'PLANTED-p@ss "w/ord"'
    scrubber = Scrubber([secret])
    for form in (secret, "PLANTED-p%40ss%20%22w%2Ford%22", "PLANTED-p%40ss+%22w%2Ford%22", json.dumps(secret)[1:-1]):
        assert scrubber.scrub(f"connect failed ({form}) at h") == f"connect failed ({MASK}) at h"
    assert "PLANTED" not in scrubber.scrub(json.dumps({"message": f"pw {secret}"}))


def test_urls_and_secret_pairs_in_text_are_masked() -> None:
    text = (
        "Could not parse SQLAlchemy URL from string 'postgresql://u:p@w@h/db'; "
        "API request to http://u:PLANTED-1@mlflow:5000/?token=PLANTED-2/api/2.0 failed with url: /?token=PLANTED-3; "
        "conninfo host=h password=PLANTED-4 dbname=x; {'sasl_plain_password': 'PLANTED-5', 'ssl_password': None}; "
        '{"api_key": "PLANTED-6"}; secret="PLANTED 7"'
    )
    scrubbed = mask_secrets_in_text(text)
    assert "PLANTED" not in scrubbed and "p@w" not in scrubbed
    assert "postgresql://***" in scrubbed and "http://u:***@mlflow:5000/?token=***" in scrubbed
    assert "host=h password=*** dbname=x" in scrubbed


def test_ordinary_text_is_left_alone() -> None:
    for text in (
        'FATAL: password authentication failed for user "alignd"',
        "trained with max_tokens=256 lr=0.0003 on 1,024 pairs",
        'connection to server at "127.0.0.1", port 5432 failed: Connection refused',
        "review page at http://127.0.0.1:8080/audit",
        "key rotation: 3 keys",
    ):
        assert Scrubber(["PLANTED-x"]).scrub(text) == text


def test_short_known_secrets_are_not_searched_for_in_text() -> None:
    # A two-letter password would mask those letters everywhere; its URLs are still masked.
    assert Scrubber(["db"]).scrub("db ok at postgresql://u:db@h/x") == "db ok at postgresql://u:***@h/x"


# --- settings -----------------------------------------------------------------------------------------------

PLANTED = {
    "db_pw": "PLANTED-db-pw-7f3a",
    "db_query_pw": "PLANTED-db-query-pw-9c1e",
    "tracking_pw": "PLANTED-tracking-pw-4e6f",
    "tracking_token": "PLANTED-tracking-token-8a0b",
    "registry_pw": "PLANTED-registry-pw-3d5c",
    "artifact_sig": "PLANTED-artifact-sig-6b2e",
    "ui_pw": "PLANTED-ui-pw-0f9d",
    "sasl_pw": "PLANTED-sasl-pw-5a7c",
    "ssl_pw": "PLANTED-ssl-pw-1e4b",
    "http_token": "PLANTED-http-token-2c8f",
    "servers_pw": "PLANTED-servers-pw-7d1a",
    "hf_token": "PLANTED-hf-token-4f0e",
}


def planted_env(database_url: str | None = None) -> dict[str, str]:
    p = PLANTED
    return {
        "ALIGND_DATABASE_URL": database_url
        or f"postgresql+psycopg://alignd:{p['db_pw']}@127.0.0.1:1/alignd?sslmode=disable&password={p['db_query_pw']}",
        "ALIGND_MLFLOW_TRACKING_URI": f"http://alice:{p['tracking_pw']}@127.0.0.1:1/?token={p['tracking_token']}",
        "ALIGND_MLFLOW_REGISTRY_URI": f"postgresql://bob:{p['registry_pw']}@127.0.0.1:1/mlflow",
        "ALIGND_MLFLOW_ARTIFACT_LOCATION": f"https://b.example/a?X-Amz-Signature={p['artifact_sig']}",
        "ALIGND_HTTP_MLFLOW_UI_URL": f"https://viewer:{p['ui_pw']}@mlflow.example/",
        "ALIGND_HTTP_TOKEN": p["http_token"],
        "ALIGND_KAFKA_BOOTSTRAP_SERVERS": f"b-1.example:9096,svc:{p['servers_pw']}@b-2.example:9096",
        "ALIGND_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "ALIGND_KAFKA_SASL_MECHANISM": "PLAIN",
        "ALIGND_KAFKA_SASL_USERNAME": "svc",
        "ALIGND_KAFKA_SASL_PASSWORD": p["sasl_pw"],
        "ALIGND_KAFKA_SSL_PASSWORD": p["ssl_pw"],
    }


def assert_nothing_planted(text: str) -> None:
    leaked = [name for name, value in PLANTED.items() if value in text]
    assert not leaked and "PLANTED" not in text, f"secrets shown in clear ({leaked}):\n{text}"


def test_redacted_masks_every_url_and_secret_setting(tmp_path: Path) -> None:
    config = tmp_path / "alignd.yaml"
    config.write_text(f"trainers:\n  policy:\n    hf_token: {PLANTED['hf_token']}\n    max_tokens: 256\n")
    settings = load_settings(config, env=planted_env())

    shown = settings.redacted()

    assert_nothing_planted(json.dumps(shown))
    assert shown["database"]["url"] == "postgresql+psycopg://alignd:***@127.0.0.1:1/alignd?sslmode=disable&password=***"
    assert shown["mlflow"]["tracking_uri"] == "http://alice:***@127.0.0.1:1/?token=***"
    assert shown["mlflow"]["registry_uri"] == "postgresql://bob:***@127.0.0.1:1/mlflow"
    assert shown["mlflow"]["artifact_location"] == "https://b.example/a?X-Amz-Signature=***"
    assert shown["http"]["mlflow_ui_url"] == "https://viewer:***@mlflow.example/"
    assert shown["http"]["token"] == "**********"
    assert shown["kafka"]["bootstrap_servers"] == "b-1.example:9096,svc:***@b-2.example:9096"
    assert shown["trainers"]["policy"] == {"hf_token": MASK, "max_tokens": 256}
    assert_nothing_planted(repr(settings))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://u:PLANTED-db-pw-7f3a@w@127.0.0.1:1/db",
        "postgresql+psycopg://u:PLANTED-db-pw-7f3a@127.0.0.1:54x/db",
        "postgresql+psycopg://u:PLANTED-db-pw-7f3a/x@127.0.0.1:1/db",
        "postgresql+psycopg://u:PLANTED-db-pw-7f3a@[127.0.0.1/db",
    ],
)
def test_a_malformed_database_url_is_masked_whole(url: str) -> None:
    shown = load_settings(None, env={"ALIGND_DATABASE_URL": url}).redacted()

    assert shown["database"]["url"] == "postgresql+psycopg://***"


def test_an_unsupported_database_url_is_refused_without_echoing_it() -> None:
    for value in ("PLANTED-db-pw-7f3a", "mysql://u:PLANTED-db-pw-7f3a@h/db", "u:PLANTED-db-pw-7f3a@h/db"):
        with pytest.raises(ConfigurationError) as caught:
            load_settings(None, env={"ALIGND_DATABASE_URL": value})
        assert "PLANTED" not in str(caught.value) and "ALIGND_DATABASE_URL" in str(caught.value)


def test_known_secrets_lists_every_secret_the_settings_and_client_variables_hold(tmp_path: Path) -> None:
    config = tmp_path / "alignd.yaml"
    config.write_text(f"trainers:\n  policy:\n    hf_token: {PLANTED['hf_token']}\n")
    settings = load_settings(config, env=planted_env())

    known = settings.known_secrets(env={"MLFLOW_TRACKING_PASSWORD": "PLANTED-env-pw", "HOME": "/home/x"})

    assert set(PLANTED.values()) | {"PLANTED-env-pw"} <= set(known)
    assert "/home/x" not in known


# --- logs ---------------------------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level, factory = root.handlers[:], root.level, logging.getLogRecordFactory()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.setLogRecordFactory(factory)
    logs.set_known_secrets(())


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_log_lines_are_scrubbed_message_extras_and_traceback(
    fmt: str, restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = PLANTED["db_pw"]
    logs.configure_logging("DEBUG", fmt, [secret])
    log = logging.getLogger("alignd.test")
    # What a driver's error can look like: the DSN, or the password alone, in the message and the traceback.
    try:
        raise RuntimeError(f"connection failed: postgresql://u:{secret}@h/db and password={secret}")
    except RuntimeError:
        log.exception("store down: %s", f"dsn host=h password='{secret}'", extra={"url": f"http://u:{secret}@h"})
    log.debug("sasl handshake %r", b"\x00svc\x00" + secret.encode())
    err = capsys.readouterr().err

    assert err.count("\n") >= 2 and "store down" in err and "sasl handshake" in err
    assert_nothing_planted(err)
    if fmt == "json":
        first = json.loads(err.splitlines()[0])
        assert first["url"] == "http://u:***@h" and "RuntimeError" in first["exception"]


def test_a_library_with_its_own_handler_logs_scrubbed_lines(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # MLflow writes its warnings (SQLAlchemy's errors among them) through a handler of its own, not ours.
    logs.configure_logging("INFO", "json", [PLANTED["registry_pw"]])
    own = logging.getLogger("mlflow.test.own_handler")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    own.addHandler(handler)
    own.propagate = False
    try:
        own.warning("engine could not be created: %s", f"postgresql://bob:{PLANTED['registry_pw']}@h/mlflow")
    finally:
        own.removeHandler(handler)
    err = capsys.readouterr().err
    assert "engine could not be created: postgresql://bob:***@h/mlflow" in err
    assert_nothing_planted(err)


def test_a_dead_part_s_last_error_is_scrubbed(restore_logging: None) -> None:
    logs.set_known_secrets([PLANTED["db_pw"]])

    class Dying:
        name = "ingest"

        def run(self, stop: threading.Event) -> None:
            raise RuntimeError(f"could not connect: {PLANTED['db_pw']} postgresql://u:{PLANTED['db_pw']}@h/db")

        def close(self) -> None:
            pass

    reported: list[str] = []
    supervisor = Supervisor(
        backoff_initial_s=10, alert_after=1, on_crash_loop=lambda _name, _n, error: reported.append(error)
    )
    supervisor.add(Dying())
    supervisor.start()
    try:
        deadline = threading.Event()
        for _ in range(500):
            if reported:
                break
            deadline.wait(0.01)
    finally:
        supervisor.stop(timeout_s=5)
    assert reported and "RuntimeError: could not connect" in reported[0]
    assert_nothing_planted(reported[0] + json.dumps(supervisor.status()))


# --- the CLI in this process ----------------------------------------------------------------------------------


@pytest.mark.parametrize("json_flag", [[], ["--json"]])
def test_config_show_prints_no_secret(
    json_flag: list[str],
    restore_logging: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in planted_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("ALIGND_LOG_LEVEL", "DEBUG")

    code = main(["config", "show", *json_flag])
    out, err = capsys.readouterr()

    assert code == 0 and "tracking_uri" in out and "alice:***@127.0.0.1" in out
    assert_nothing_planted(out + err)


def test_a_database_url_sqlalchemy_cannot_read_is_reported_masked(
    restore_logging: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ALIGND_DATABASE_URL", f"postgresql+psycopg://u:{PLANTED['db_pw']}@127.0.0.1:54x2/db")
    monkeypatch.setenv("ALIGND_LOG_LEVEL", "DEBUG")

    code = main(["events", "count"])
    out, err = capsys.readouterr()

    assert code == 2 and "ALIGND_DATABASE_URL" in err and "postgresql+psycopg://***" in err
    assert_nothing_planted(out + err)


# --- training jobs ------------------------------------------------------------------------------------------


def test_a_training_child_s_error_and_log_lines_are_scrubbed(tmp_path: Path) -> None:
    # error.json's reason becomes a stored training.failed event and an MLflow tag: it must not carry a secret.
    from trainers.worker import _JsonLines, spec_scrubber, write_error

    spec = {
        "job_id": "j1",
        "tracking_uri": f"http://alice:{PLANTED['tracking_pw']}@mlflow:5000/?token={PLANTED['tracking_token']}",
        "registry_uri": f"postgresql://bob:{PLANTED['registry_pw']}@db/mlflow",
    }
    message = f"MLflow said no to {spec['tracking_uri']} (password {PLANTED['registry_pw']})"
    try:
        raise RuntimeError(message)  # (the traceback quotes this line: it must not name a planted value)
    except RuntimeError as exc:
        write_error(tmp_path, exc, spec)
        record = logging.makeLogRecord(
            {"msg": "failed: %s", "args": (str(exc),), "exc_info": (RuntimeError, exc, exc.__traceback__)}
        )
    written = (tmp_path / "error.json").read_text()
    line = _JsonLines("j1", spec_scrubber(spec)).format(record)

    assert "RuntimeError: MLflow said no to http://alice:***@mlflow:5000/?token=***" in json.loads(written)["reason"]
    assert_nothing_planted(written + line)


def test_review_page_links_never_carry_the_mlflow_ui_credentials() -> None:
    from daemon.http import mlflow_links

    links = mlflow_links(
        {"run_id": "abc", "name": "alignd-policy", "version": 3}, "https://ops:PLANTED-ui@mlflow:5000/"
    )

    assert [link["href"] for link in links] == [
        "https://mlflow:5000/#/runs/abc",
        "https://mlflow:5000/#/models/alignd-policy/versions/3",
    ]
    assert mlflow_links({"run_id": "abc"}, "https://a@b@mlflow/") == [{"label": "MLflow run abc", "href": None}]
