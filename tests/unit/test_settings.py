"""Settings from a YAML file and ALIGND_* variables (passed as dicts: the real environment is never read)."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.settings import load_settings
from events.errors import ConfigurationError
from events.model import DEFAULT_MAX_MESSAGE_BYTES


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "alignd.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def refused(config_file: Path | None = None, /, **env: str) -> str:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(config_file, env=env)
    return str(caught.value)


@pytest.fixture
def cafile(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n", encoding="utf-8")
    return path


# --- defaults and sources -------------------------------------------------------------------------------


def test_defaults_without_file_or_environment() -> None:
    settings = load_settings(None, env={})

    assert settings.database.url == "sqlite:///alignd.db"
    assert settings.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert settings.kafka.security_protocol == "PLAINTEXT"
    assert (settings.topics.interactions, settings.topics.feedback) == (
        "alignd.interactions",
        "alignd.feedback",
    )
    assert (settings.topics.alerts, settings.topics.models, settings.topics.dlq) == (
        "alignd.alerts",
        "alignd.models",
        "alignd.dlq",
    )
    assert settings.ingest.max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES == 1024 * 1024
    assert settings.log.level == "INFO"


def test_yaml_file_sets_values(tmp_path: Path) -> None:
    config = write_config(tmp_path, "kafka:\n  bootstrap_servers: broker-1:9092\ningest:\n  max_poll_records: 50\n")

    settings = load_settings(config, env={})

    assert settings.kafka.bootstrap_servers == "broker-1:9092"
    assert settings.ingest.max_poll_records == 50


def test_alignd_config_variable_names_the_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, "topics:\n  dlq: custom.dlq\n")

    assert load_settings(None, env={"ALIGND_CONFIG": str(config)}).topics.dlq == "custom.dlq"


def test_environment_wins_over_the_file_field_by_field(tmp_path: Path) -> None:
    config = write_config(tmp_path, "kafka:\n  bootstrap_servers: from-file:9092\n  client_id: file-client\n")

    settings = load_settings(config, env={"ALIGND_KAFKA_BOOTSTRAP_SERVERS": "from-env:9092"})

    assert settings.kafka.bootstrap_servers == "from-env:9092"
    assert settings.kafka.client_id == "file-client"


@pytest.mark.parametrize(
    ("name", "value", "section", "field", "expected"),
    [
        ("ALIGND_DATABASE_URL", "postgresql+psycopg://alignd@db/alignd", "database", "url", None),
        ("ALIGND_MLFLOW_TRACKING_URI", "http://mlflow:5000", "mlflow", "tracking_uri", None),
        ("ALIGND_INGEST_MAX_POLL_RECORDS", "250", "ingest", "max_poll_records", 250),
        ("ALIGND_INGEST_RETRY_MAX_S", "2.5", "ingest", "retry_max_s", 2.5),
        ("ALIGND_INGEST_PROJECT", "false", "ingest", "project", False),
        ("ALIGND_KAFKA_SSL_CHECK_HOSTNAME", "0", "kafka", "ssl_check_hostname", False),
        ("ALIGND_LOG_LEVEL", "DEBUG", "log", "level", None),
    ],
)
def test_environment_variable_maps_onto_its_setting(
    name: str, value: str, section: str, field: str, expected: object
) -> None:
    settings = load_settings(None, env={name: value})

    assert getattr(getattr(settings, section), field) == (value if expected is None else expected)


def test_empty_variable_unsets_an_optional_setting(tmp_path: Path) -> None:
    config = write_config(tmp_path, "mlflow:\n  registry_uri: http://registry\n")

    assert load_settings(config, env={"ALIGND_MLFLOW_REGISTRY_URI": ""}).mlflow.registry_uri is None


def test_test_variables_and_other_prefixes_are_ignored() -> None:
    env = {
        "ALIGND_TEST_KAFKA": "1",
        "ALIGND_TEST_DATABASE_URLS": "x",
        "PATH": "/bin",
        "KAFKA_BOOTSTRAP_SERVERS": "b:1",
    }

    assert load_settings(None, env=env) == load_settings(None, env={})


# --- refusals -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ALIGND_FOO_BAR", "ALIGND_KAFKA", "ALIGND_DATABASEURL"])
def test_unknown_section_variable_is_refused_naming_it(name: str) -> None:
    message = refused(**{name: "x"})

    assert name in message
    assert "KAFKA" in message  # lists the sections that exist


def test_unknown_setting_in_a_known_section_is_refused_naming_the_variable() -> None:
    message = refused(ALIGND_KAFKA_NOPE="1")

    assert "kafka.nope" in message
    assert "ALIGND_KAFKA_NOPE" in message
    assert "unknown setting" in message


def test_unknown_setting_in_the_file_is_refused(tmp_path: Path) -> None:
    message = refused(write_config(tmp_path, "ingest:\n  max_pol_records: 5\n"))

    assert "ingest.max_pol_records" in message
    assert "unknown setting" in message


@pytest.mark.parametrize(
    ("name", "value", "setting"),
    [
        ("ALIGND_INGEST_MAX_POLL_RECORDS", "many", "ingest.max_poll_records"),
        ("ALIGND_INGEST_MAX_POLL_RECORDS", "0", "ingest.max_poll_records"),
        ("ALIGND_INGEST_MAX_MESSAGE_BYTES", "1.5", "ingest.max_message_bytes"),
        ("ALIGND_INGEST_PROJECT", "perhaps", "ingest.project"),
        ("ALIGND_KAFKA_SESSION_TIMEOUT_MS", "soon", "kafka.session_timeout_ms"),
        ("ALIGND_KAFKA_SECURITY_PROTOCOL", "TLS", "kafka.security_protocol"),
        ("ALIGND_KAFKA_AUTO_OFFSET_RESET", "middle", "kafka.auto_offset_reset"),
        ("ALIGND_LOG_LEVEL", "LOUD", "log.level"),
    ],
)
def test_wrong_value_names_the_setting_and_its_variable(name: str, value: str, setting: str) -> None:
    message = refused(**{name: value})

    assert setting in message
    assert name in message


def test_wrong_type_in_the_file_names_the_setting_and_its_variable(tmp_path: Path) -> None:
    message = refused(write_config(tmp_path, "ingest:\n  poll_timeout_ms: soon\n"))

    assert "ingest.poll_timeout_ms" in message
    assert "ALIGND_INGEST_POLL_TIMEOUT_MS" in message


def test_every_problem_is_reported_at_once() -> None:
    message = refused(ALIGND_INGEST_MAX_POLL_RECORDS="many", ALIGND_LOG_FORMAT="xml")

    assert "ALIGND_INGEST_MAX_POLL_RECORDS" in message
    assert "ALIGND_LOG_FORMAT" in message


def test_unsupported_database_url_is_refused() -> None:
    message = refused(ALIGND_DATABASE_URL="mysql://root@db/alignd")

    assert "database" in message
    assert "'mysql'" in message


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
def test_sasl_without_credentials_is_refused_naming_what_is_missing(protocol: str) -> None:
    message = refused(ALIGND_KAFKA_SECURITY_PROTOCOL=protocol)

    assert protocol in message
    for missing in ("sasl_mechanism", "sasl_username", "sasl_password"):
        assert missing in message


def test_sasl_with_only_a_password_missing_names_just_that() -> None:
    message = refused(
        ALIGND_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        ALIGND_KAFKA_SASL_MECHANISM="PLAIN",
        ALIGND_KAFKA_SASL_USERNAME="u",
    )

    assert "sasl_password" in message
    assert "sasl_username" not in message


def test_ssl_cafile_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"

    message = refused(ALIGND_KAFKA_SECURITY_PROTOCOL="SSL", ALIGND_KAFKA_SSL_CAFILE=str(missing))

    assert "ssl_cafile" in message
    assert str(missing) in message


def test_client_certificate_without_its_key_is_refused(cafile: Path) -> None:
    message = refused(ALIGND_KAFKA_SECURITY_PROTOCOL="SSL", ALIGND_KAFKA_SSL_CERTFILE=str(cafile))

    assert "ssl_certfile" in message and "ssl_keyfile" in message


def test_missing_config_file_is_refused_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"

    message = refused(missing)

    assert str(missing) in message


@pytest.mark.parametrize(("text", "problem"), [("kafka: [unclosed\n", "YAML"), ("- a\n- b\n", "mapping")])
def test_config_file_that_is_not_a_mapping_of_sections_is_refused(tmp_path: Path, text: str, problem: str) -> None:
    assert problem in refused(write_config(tmp_path, text))


# --- redaction and kafka-python keyword arguments -------------------------------------------------------


SASL_ENV = {
    "ALIGND_KAFKA_BOOTSTRAP_SERVERS": "b-1.example:9096, b-2.example:9096",
    "ALIGND_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "ALIGND_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "ALIGND_KAFKA_SASL_USERNAME": "alignd",
    "ALIGND_KAFKA_SASL_PASSWORD": "sasl-s3cret",
    "ALIGND_KAFKA_SSL_PASSWORD": "key-s3cret",
    "ALIGND_DATABASE_URL": "postgresql+psycopg://alignd:db-s3cret@db.example:5432/alignd",
}


def test_redacted_masks_every_secret(cafile: Path) -> None:
    settings = load_settings(None, env={**SASL_ENV, "ALIGND_KAFKA_SSL_CAFILE": str(cafile)})

    shown = settings.redacted()

    assert shown["kafka"]["sasl_password"] == "**********"
    assert shown["kafka"]["ssl_password"] == "**********"
    assert shown["database"]["url"] == "postgresql+psycopg://alignd:***@db.example:5432/alignd"
    for secret in ("sasl-s3cret", "key-s3cret", "db-s3cret"):
        assert secret not in repr(shown)


def test_redacted_keeps_what_is_not_secret() -> None:
    shown = load_settings(None, env=SASL_ENV).redacted()

    assert shown["kafka"]["sasl_username"] == "alignd"
    assert shown["kafka"]["security_protocol"] == "SASL_SSL"
    assert shown["topics"]["dlq"] == "alignd.dlq"


def test_redacted_leaves_unset_secrets_as_none() -> None:
    shown = load_settings(None, env={}).redacted()

    assert shown["kafka"]["sasl_password"] is None
    assert shown["database"]["url"] == "sqlite:///alignd.db"


def test_secrets_are_hidden_from_repr() -> None:
    settings = load_settings(None, env=SASL_ENV)

    assert "sasl-s3cret" not in repr(settings)
    assert "key-s3cret" not in repr(settings)


def test_client_kwargs_pass_sasl_and_ssl_through_under_kafka_python_names(cafile: Path) -> None:
    settings = load_settings(None, env={**SASL_ENV, "ALIGND_KAFKA_SSL_CAFILE": str(cafile)})

    kwargs = settings.kafka.client_kwargs()

    assert kwargs["bootstrap_servers"] == ["b-1.example:9096", "b-2.example:9096"]
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "alignd"
    assert kwargs["sasl_plain_password"] == "sasl-s3cret"
    assert kwargs["ssl_cafile"] == str(cafile)
    assert kwargs["ssl_password"] == "key-s3cret"
    assert kwargs["ssl_check_hostname"] is True
    assert kwargs["client_id"] == "alignd"


def test_client_kwargs_pass_a_client_certificate_for_mtls(tmp_path: Path, cafile: Path) -> None:
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_text("cert", encoding="utf-8")
    key.write_text("key", encoding="utf-8")
    env = {
        "ALIGND_KAFKA_SECURITY_PROTOCOL": "SSL",
        "ALIGND_KAFKA_SSL_CAFILE": str(cafile),
        "ALIGND_KAFKA_SSL_CERTFILE": str(cert),
        "ALIGND_KAFKA_SSL_KEYFILE": str(key),
        "ALIGND_KAFKA_SSL_CHECK_HOSTNAME": "false",
    }

    kwargs = load_settings(None, env=env).kafka.client_kwargs()

    assert (kwargs["ssl_cafile"], kwargs["ssl_certfile"], kwargs["ssl_keyfile"]) == (
        str(cafile),
        str(cert),
        str(key),
    )
    assert kwargs["ssl_check_hostname"] is False
    assert not any(name.startswith("sasl_") for name in kwargs)


def test_plaintext_client_kwargs_carry_no_sasl_or_ssl_settings() -> None:
    kwargs = load_settings(None, env={}).kafka.client_kwargs()

    assert kwargs["security_protocol"] == "PLAINTEXT"
    assert kwargs["bootstrap_servers"] == ["127.0.0.1:9092"]
    assert not any(name.startswith(("sasl_", "ssl_")) for name in kwargs)


# --- schedule and monitors ------------------------------------------------------------------------------


def test_evaluation_cron_is_off_by_default_and_accepted_when_set() -> None:
    assert load_settings(None, env={}).schedule.evaluation_cron is None
    settings = load_settings(None, env={"ALIGND_SCHEDULE_EVALUATION_CRON": "30 5 * * *"})
    assert settings.schedule.evaluation_cron == "30 5 * * *"
    assert load_settings(None, env={"ALIGND_SCHEDULE_EVALUATION_CRON": ""}).schedule.evaluation_cron is None


@pytest.mark.parametrize("name", ["ALIGND_SCHEDULE_EVALUATION_CRON", "ALIGND_SCHEDULE_REWARD_CRON"])
def test_a_cron_that_is_not_a_crontab_expression_is_refused_at_load(name: str) -> None:
    message = refused(**{name: "daily"})
    assert name in message and "not a crontab expression" in message and "30 5 * * *" in message


def test_champion_regression_runs_by_default_with_configurable_tolerances() -> None:
    monitors = load_settings(None, env={}).monitors
    assert "champion_regression" in monitors.detectors
    assert (monitors.regression_accuracy_drop, monitors.regression_unsafe_rise) == (0.05, 0.05)
    changed = load_settings(None, env={"ALIGND_MONITORS_REGRESSION_UNSAFE_RISE": "0.02"}).monitors
    assert changed.regression_unsafe_rise == 0.02
    assert "ALIGND_MONITORS_REGRESSION_ACCURACY_DROP" in refused(ALIGND_MONITORS_REGRESSION_ACCURACY_DROP="2")


def test_the_jailbreak_pattern_boost_is_a_setting_that_reaches_the_shared_scorer() -> None:
    from daemon.bootstrap import build_detectors

    settings = load_settings(
        None, env={"ALIGND_MONITORS_JAILBREAK_PATTERN_BOOST": "0.3", "ALIGND_MONITORS_EMBEDDINGS": "false"}
    )
    attempt, success = build_detectors(settings, ["jailbreak_attempt", "jailbreak_success"])
    assert attempt.scorer is success.scorer and attempt.scorer.config.pattern_boost == 0.3
    assert load_settings(None, env={}).monitors.jailbreak_pattern_boost == 0.6
    assert "ALIGND_MONITORS_JAILBREAK_PATTERN_BOOST" in refused(ALIGND_MONITORS_JAILBREAK_PATTERN_BOOST="1.5")


def test_every_http_limit_is_a_setting_with_the_same_default() -> None:
    import dataclasses

    from daemon.http import HttpLimits
    from daemon.settings import HttpSettings

    defaults = HttpSettings()
    assert {f.name: f.default for f in dataclasses.fields(HttpLimits)} == {
        f.name: getattr(defaults, f.name) for f in dataclasses.fields(HttpLimits)
    }


# --- settings from files (Docker secrets) and the database password -------------------------------------


def secret_file(tmp_path: Path, text: str, name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_setting_is_read_from_the_file_its_file_variable_names(tmp_path: Path) -> None:
    token = secret_file(tmp_path, "t0ken-from-a-file\n")

    settings = load_settings(None, env={"ALIGND_HTTP_TOKEN_FILE": str(token)})

    assert settings.http.token is not None
    assert settings.http.token.get_secret_value() == "t0ken-from-a-file"  # the trailing newline is not part of it
    assert "t0ken-from-a-file" not in repr(settings)


def test_any_setting_may_come_from_a_file_and_the_file_wins_over_the_config_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, "kafka:\n  sasl_password: from-the-config-file\n")
    env = {
        "ALIGND_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "ALIGND_KAFKA_SASL_MECHANISM": "PLAIN",
        "ALIGND_KAFKA_SASL_USERNAME": "alignd",
        "ALIGND_KAFKA_SASL_PASSWORD_FILE": str(secret_file(tmp_path, "sasl-from-a-file\r\n")),
        "ALIGND_INGEST_MAX_POLL_RECORDS_FILE": str(secret_file(tmp_path, "250", "records")),
    }

    settings = load_settings(config, env=env)

    assert settings.kafka.client_kwargs()["sasl_plain_password"] == "sasl-from-a-file"
    assert settings.ingest.max_poll_records == 250


def test_a_missing_secret_file_is_refused_naming_the_variable_and_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "secrets" / "alignd_http_token"

    message = refused(ALIGND_HTTP_TOKEN_FILE=str(missing))

    assert "ALIGND_HTTP_TOKEN_FILE" in message and str(missing) in message


def test_an_unreadable_or_empty_secret_file_is_refused(tmp_path: Path) -> None:
    assert "is empty" in refused(ALIGND_HTTP_TOKEN_FILE=str(secret_file(tmp_path, "\n")))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00")
    assert "not UTF-8" in refused(ALIGND_HTTP_TOKEN_FILE=str(binary))
    message = refused(ALIGND_HTTP_TOKEN_FILE=str(tmp_path))  # a folder
    assert "ALIGND_HTTP_TOKEN_FILE" in message and str(tmp_path) in message


def test_a_setting_and_its_file_variable_together_are_refused(tmp_path: Path) -> None:
    message = refused(ALIGND_HTTP_TOKEN="t", ALIGND_HTTP_TOKEN_FILE=str(secret_file(tmp_path, "t")))

    assert "ALIGND_HTTP_TOKEN and ALIGND_HTTP_TOKEN_FILE are both set" in message


def test_an_empty_file_variable_is_unset_and_an_unknown_one_is_refused(tmp_path: Path) -> None:
    assert load_settings(None, env={"ALIGND_HTTP_TOKEN_FILE": ""}).http.token is None
    message = refused(ALIGND_KAFKA_NOPE_FILE=str(secret_file(tmp_path, "x")))
    assert "ALIGND_KAFKA_NOPE_FILE" in message and "unknown setting" in message


def test_the_database_password_joins_a_url_written_without_one(tmp_path: Path) -> None:
    env = {
        "ALIGND_DATABASE_URL": "postgresql+psycopg://alignd@postgres:5432/alignd?sslmode=disable",
        "ALIGND_DATABASE_PASSWORD_FILE": str(secret_file(tmp_path, "p@ss/w:rd\n")),
    }

    settings = load_settings(None, env=env)

    assert settings.database.url == "postgresql+psycopg://alignd:p%40ss%2Fw%3Ard@postgres:5432/alignd?sslmode=disable"
    assert settings.redacted()["database"] == {
        "url": "postgresql+psycopg://alignd:***@postgres:5432/alignd?sslmode=disable",
        "password": "**********",
    }
    assert "p@ss/w:rd" in settings.known_secrets(env={})
    assert "p@ss" not in repr(settings) and "p%40ss" not in repr(settings)


def test_the_database_password_is_the_one_sqlalchemy_reads_from_the_url() -> None:
    from sqlalchemy.engine import make_url

    settings = load_settings(
        None, env={"ALIGND_DATABASE_URL": "postgresql+psycopg://alignd@db/alignd", "ALIGND_DATABASE_PASSWORD": "a b%c"}
    )

    assert make_url(settings.database.url).password == "a b%c"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("sqlite:///alignd.db", "postgresql"),
        ("postgresql+psycopg://db/alignd", "user name"),
        ("postgresql+psycopg://alignd:other@db/alignd", "keep one"),
    ],
)
def test_a_database_password_the_url_cannot_take_is_refused(url: str, problem: str) -> None:
    message = refused(ALIGND_DATABASE_URL=url, ALIGND_DATABASE_PASSWORD="s3cret")

    assert problem in message and "ALIGND_DATABASE" in message
    assert "s3cret" not in message and "other" not in message


def test_otlp_logs_without_otlp_spans_is_refused_naming_both() -> None:
    message = refused(ALIGND_TOPICS_OTLP_LOGS="otlp_logs")
    assert "ALIGND_TOPICS_" in message and "otlp_logs is set without otlp_spans" in message


def test_the_ingestor_is_given_the_otlp_logs_topic_and_the_join_window() -> None:
    from daemon.configs import ingest_config

    settings = load_settings(
        env={
            "ALIGND_TOPICS_OTLP_SPANS": "otlp_spans",
            "ALIGND_TOPICS_OTLP_LOGS": "otlp_logs",
            "ALIGND_INGEST_OTLP_JOIN_WINDOW_S": "12.5",
        }
    )
    config = ingest_config(settings)
    assert config.otlp_topics == ("otlp_spans",) and config.otlp_log_topics == ("otlp_logs",)
    assert config.otlp_join_window_s == 12.5
