"""Logging set up once, for the CLI and the daemon: JSON lines with ids, or plain text in a terminal.

Every line is scrubbed of secrets on its way out (events.redact): the secret values the settings hold (a
driver's error may echo its DSN, a Kafka DEBUG line its SASL handshake), URL credentials and ``password=...``
pairs, in the message, the extra fields and the traceback alike. :func:`scrub` does the same for text that
leaves the process another way (the CLI's error messages, a part's last error shown on /health).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from events.redact import Scrubber, mask_url, mask_url_list

if TYPE_CHECKING:
    from daemon.settings import Settings

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is an id worth keeping
# (but uvicorn's color_message, the message again with terminal colour codes).
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName", "color_message"}

# The secrets this process knows, set by configure_logging; until then, URLs and password=... pairs only.
_scrubber = Scrubber()


def scrub(text: str) -> str:
    """``text`` with the known secrets, URL credentials and ``password=...`` pairs masked."""
    return _scrubber.scrub(text)


def set_known_secrets(secrets: Iterable[str | None]) -> None:
    """Tell :func:`scrub` and the log formatters which values are secrets (the settings' passwords, tokens)."""
    global _scrubber
    _scrubber = Scrubber(secrets)


_base_record_factory = logging.getLogRecordFactory()
_plain_formatter = logging.Formatter()


def _scrubbing_record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    """Every record, from any logger, scrubbed when made: libraries with handlers of their own (MLflow's writes
    to stderr itself) print the scrubbed message and traceback, not what the driver put in them."""
    record = _base_record_factory(*args, **kwargs)
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string is the handler's to report, as logging does
        return record
    cleaned = scrub(message)
    if cleaned != message:
        record.msg, record.args = cleaned, ()
    if record.exc_info and record.exc_info[1] is not None:
        # Formatters use exc_text when it is set instead of formatting the traceback again.
        record.exc_text = scrub(_plain_formatter.formatException(record.exc_info))
    if record.stack_info:
        record.stack_info = scrub(record.stack_info)
    record._scrubbed = True  # noqa: SLF001 - a mark on the record; the formatters need not scrub message and traceback again
    return record


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        scrubbed = getattr(record, "_scrubbed", False)
        message = record.getMessage()
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message if scrubbed else scrub(message),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | bool) or value is None else _scrub_value(value)
        if record.exc_info:
            text = record.exc_text or self.formatException(record.exc_info)
            entry["exception"] = text if scrubbed and record.exc_text else scrub(text)
        if record.stack_info:
            entry["stack"] = record.stack_info if scrubbed else scrub(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _scrub_value(value: object) -> object:
    # An extra field keeps its JSON shape when it holds nothing secret; otherwise it is shown as scrubbed text.
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    cleaned = scrub(text)
    if cleaned == text:
        return value
    return cleaned


class TextFormatter(logging.Formatter):
    """The plain-text line, scrubbed whole (message, traceback and all)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return line if getattr(record, "_scrubbed", False) else scrub(line)


# What configure_logging was last given (level, format): a process the daemon starts logs alike.
_configured: tuple[str, str] | None = None

#: The variable a training or evaluation child reads its logging from (trainers.worker.configure_child_logging):
#: ``{"level": ..., "format": ..., "file": ...}``. Not an ``ALIGND_*`` setting: it is this process's hand-off to
#: its children, written by :func:`configure_logging`, never by a user.
CHILD_LOG_ENV = "_ALIGND_CHILD_LOG"

#: Libraries that give their loggers a stream handler of their own (and stop propagation); configure_logging
#: takes them back, so each sink has one format.
_OWN_HANDLERS = ("mlflow", "sqlalchemy.engine", "alembic", "huey", "transformers")


def configured() -> tuple[str, str]:
    """The level and format :func:`configure_logging` last set (the root logger's level and JSON if never)."""
    return _configured or (logging.getLevelName(logging.getLogger().level), "json")


class _WarningsAtDebug(logging.Filter):
    """``warnings.warn`` from libraries (transformers', peft's FutureWarning and UserWarning) becomes a DEBUG
    record: in the log when debugging, never on a terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


class _ClosedSocketAtDebug(logging.Filter):
    """kafka-python's transport logs ``Error receiving network data`` at ERROR, with an AttributeError from a
    socket it has just set to None, when a consumer is closed while its network thread is still receiving
    (kafka/net/transport.py ``_sock_recv``): nothing was lost, the client was closing. A DEBUG record then,
    so a healthy run shows no ERROR; the same message on an open transport stays an ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR and "(closed)>" in record.getMessage() and isinstance(exc, AttributeError):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def adopt_library_loggers() -> None:
    """Send the loggers that libraries configured themselves (MLflow's, transformers') through our handler.

    MLflow replaces the handlers of ``mlflow``, ``sqlalchemy.engine``, ``alembic`` and ``huey`` when imported
    (unless ``MLFLOW_CONFIGURE_LOGGING`` is false, which :func:`configure_logging` sets for what is imported
    later); transformers gives its root logger a stderr handler the first time it logs. Called by
    :func:`configure_logging`, and again by code that imports such a library after it (the demo, a child).
    """
    for name in _OWN_HANDLERS:
        lib = logging.getLogger(name)
        lib.handlers[:] = []
        lib.propagate = True
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:
        transformers_logging.disable_default_handler()
        transformers_logging.enable_propagation()
        if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1":
            transformers_logging.disable_progress_bar()


def configure_logging(
    level: str = "INFO", fmt: str = "json", secrets: Iterable[str | None] = (), *, file: Path | None = None
) -> None:
    """Log at ``level`` as JSON lines or text to stderr, or appended to ``file``, masking ``secrets`` (and URL
    credentials) in every line.

    One handler, on the root logger, for every logger: libraries with handlers of their own are taken back
    (:func:`adopt_library_loggers`), library warnings are DEBUG records, and the training and evaluation
    children this process starts log at the same level, in the same format, to the same place
    (:data:`CHILD_LOG_ENV`).
    """
    global _configured
    _configured = (level, fmt)
    set_known_secrets(secrets)
    logging.setLogRecordFactory(_scrubbing_record_factory)
    handler: logging.Handler = (
        logging.FileHandler(file, encoding="utf-8") if file is not None else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, logging.FileHandler):
            old.close()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python logs every reconnect at INFO/WARNING; keep its noise out of ours unless debugging.
    logging.getLogger("kafka").setLevel(logging.ERROR if level != "DEBUG" else logging.DEBUG)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    transport = logging.getLogger("kafka.net.transport")
    if not any(isinstance(f, _ClosedSocketAtDebug) for f in transport.filters):
        transport.addFilter(_ClosedSocketAtDebug())
    logging.captureWarnings(True)
    py_warnings = logging.getLogger("py.warnings")
    if not any(isinstance(f, _WarningsAtDebug) for f in py_warnings.filters):
        py_warnings.addFilter(_WarningsAtDebug())
    # These variables are how the libraries (and our children) are told, whenever they are imported or started:
    # an MLflow imported later leaves its loggers alone, and a child logs as this process does.
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"
    if file is not None or not sys.stderr.isatty():
        # Progress bars are for a terminal: in a log they are lines of another format (MLflow's artifact
        # downloads, transformers' weight loading and GGUF conversion, in this process and in its children;
        # tqdm reads TQDM_DISABLE when imported).
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        os.environ["TQDM_DISABLE"] = "1"
    os.environ[CHILD_LOG_ENV] = json.dumps(
        {"level": level, "format": fmt, "file": str(file) if file is not None else None}
    )
    adopt_library_loggers()


def role_announcements(settings: Settings, roles: Iterable[str]) -> list[str]:
    """One line per long-running role of ``alignd run`` saying what it serves and where, logged at INFO when it
    starts (the ``http`` role says its URL itself once it listens, as ``review page at ...``)."""
    kafka, topics, schedule = mask_url_list(settings.kafka.bootstrap_servers), settings.topics, settings.schedule
    inbound = [t for t in (topics.interactions, topics.feedback, topics.otlp_spans, topics.otlp_logs) if t]
    lines = {
        "ingest": f"ingest: consuming {', '.join(inbound)} from Kafka at {kafka} (group {settings.kafka.group_id}); "
        f"refused input to {topics.dlq}",
        "project": "project: folding the projections and the audit chain",
        "monitor": f"monitor: detectors {', '.join(settings.monitors.detectors)}; alerts to {topics.alerts}, "
        f"model changes to {topics.models} on Kafka at {kafka}",
        "vllm-sync": f"vllm-sync: following {topics.models} (group {settings.vllm.group_id}); the {settings.vllm.kind} "
        f"champion served as {settings.vllm.served_name} by vLLM at {mask_url(settings.vllm.url or '(unset)')}, "
        f"adapters in {settings.vllm.adapter_dir}",
        "guard": f"guard: POST http://{settings.guard.host}:{settings.guard.port}/v1/guard, detectors "
        f"{', '.join(settings.guard.detectors) or 'none'} (blocking on {', '.join(settings.guard.block_on) or 'rules only'}), "
        f"guard rules read every {settings.guard.refresh_s:g} s",
        "schedule": f"schedule: reward cron {schedule.reward_cron or 'off'}, policy cron {schedule.policy_cron or 'off'} "
        f"({schedule.timezone}), volume checked every {schedule.check_interval_s:g} s, on the leader only",
    }
    return [lines[role] for role in roles if role in lines]
