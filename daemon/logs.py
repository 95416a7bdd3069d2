"""Logging set up once, for the CLI and the daemon: JSON lines with ids, or plain text in a terminal.

Every line is scrubbed of secrets on its way out (events.redact): the secret values the settings hold (a
driver's error may echo its DSN, a Kafka DEBUG line its SASL handshake), URL credentials and ``password=...``
pairs, in the message, the extra fields and the traceback alike. :func:`scrub` does the same for text that
leaves the process another way (the CLI's error messages, a part's last error shown on /health).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from events.redact import Scrubber

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is an id worth keeping.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

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


def configured() -> tuple[str, str]:
    """The level and format :func:`configure_logging` last set (the root logger's level and JSON if never)."""
    return _configured or (logging.getLevelName(logging.getLogger().level), "json")


def configure_logging(level: str = "INFO", fmt: str = "json", secrets: Iterable[str | None] = ()) -> None:
    """Log to stderr at ``level`` as JSON lines or text, masking ``secrets`` (and URL credentials) in every line."""
    global _configured
    _configured = (level, fmt)
    set_known_secrets(secrets)
    logging.setLogRecordFactory(_scrubbing_record_factory)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python logs every reconnect at INFO/WARNING; keep its noise out of ours unless debugging.
    logging.getLogger("kafka").setLevel(logging.ERROR if level != "DEBUG" else logging.DEBUG)
    logging.getLogger("alembic").setLevel(logging.WARNING)
