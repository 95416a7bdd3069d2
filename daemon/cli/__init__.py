"""The ``alignd`` command line (README.md#cli-at-a-glance): the parser, assembled from one module per noun, and ``main``.

Each module under ``daemon/cli/`` adds its commands (``add_<noun>_commands``) through
:func:`daemon.cli.command.add_command`; a command takes its parts from the object graph of
``daemon/bootstrap.py`` and prints through ``daemon/cli/output.py``. ``main`` loads the settings, configures
logging once, runs the command and turns the errors a user can act on into a message and an exit status:
2 for a mistake in what was asked (:class:`CliError`, a configuration error), 1 for everything else, and
every message scrubbed of the secrets the settings hold.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from daemon.cli.alerts import add_alerts_commands
from daemon.cli.audit import add_audit_commands
from daemon.cli.command import AddCommand, CliError, add_command
from daemon.cli.config import add_config_commands
from daemon.cli.datasets import add_datasets_commands
from daemon.cli.db import add_db_commands
from daemon.cli.demo import add_demo_commands
from daemon.cli.dlq import add_dlq_commands
from daemon.cli.events import add_events_commands
from daemon.cli.explain import add_explain_commands
from daemon.cli.guard import add_guard_commands
from daemon.cli.ingest import add_ingest_commands
from daemon.cli.jobs import add_jobs_commands
from daemon.cli.models import add_models_commands
from daemon.cli.monitors import add_monitors_commands
from daemon.cli.quarantine import add_quarantine_commands
from daemon.cli.replay import add_replay_commands
from daemon.cli.run import add_run_commands
from daemon.cli.train import add_train_commands
from daemon.logs import configure_logging, scrub
from daemon.settings import load_settings
from events.errors import AlignmentError, ConfigurationError, StoreUnavailableError
from events.redact import mask_secrets_in_text, mask_url_list

__all__ = ["CliError", "build_parser", "main"]

#: The command groups, in the order ``alignd --help`` lists them.
NOUNS: tuple[Callable[[Any, AddCommand], None], ...] = (
    add_db_commands,
    add_ingest_commands,
    add_events_commands,
    add_dlq_commands,
    add_replay_commands,
    add_monitors_commands,
    add_alerts_commands,
    add_run_commands,
    add_demo_commands,
    add_train_commands,
    add_models_commands,
    add_datasets_commands,
    add_quarantine_commands,
    add_audit_commands,
    add_explain_commands,
    add_guard_commands,
    add_jobs_commands,
    add_config_commands,
)


def _version() -> str:
    """The installed distribution's version ("unknown" when run from a tree that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("alignd")
    except PackageNotFoundError:
        return "unknown"


class _Parser(argparse.ArgumentParser):
    """argparse, saying which command was meant when a command, an action or a choice is mistyped.

    The subparsers are made of this class too (``add_parser`` uses the parent's class).
    """

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is None or value in action.choices:
            return
        choices = [str(c) for c in action.choices]
        close = difflib.get_close_matches(str(value), choices, n=1)
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001 - argparse exposes no other name
            # "alignd models" -> "models "; the top level has no prefix.
            prefix = self.prog.removeprefix("alignd").strip()
            prefix = f"{prefix} " if prefix else ""
            hint = f"did you mean '{prefix}{close[0]}'?" if close else f"`alignd {prefix}--help` lists them"
            self.exit(2, f"alignd: no command '{prefix}{value}'; {hint}\n")
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise argparse.ArgumentError(
            action, f"invalid choice: {value!r} (choose from {', '.join(map(repr, choices))}){hint}"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="alignd", description="Continuous alignment daemon.")
    parser.add_argument("--version", action="version", version=f"alignd {_version()}")
    parser.add_argument("--config", help="YAML settings file (default: $ALIGND_CONFIG)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="overrides log.level")
    parser.add_argument("--log-format", choices=["json", "text"], help="overrides log.format")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_commands in NOUNS:
        add_commands(commands, add_command)
    return parser


def _fail(message: str) -> None:
    """An error for the user, on stderr; every message goes through here, scrubbed of secrets (a driver's or
    MLflow's error may echo the URL it was given, password and all)."""
    print(f"alignd: {scrub(message)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigurationError as exc:
        # The settings are not known yet: URL credentials and password=... pairs are masked, nothing more.
        print(f"alignd: {mask_secrets_in_text(str(exc))}", file=sys.stderr)
        return 2
    configure_logging(
        args.log_level or settings.log.level, args.log_format or settings.log.format, settings.known_secrets()
    )
    try:
        return int(args.handler(settings, args))
    except (CliError, ConfigurationError) as exc:
        _fail(str(exc))
        return 2
    except StoreUnavailableError as exc:
        where = settings.redacted()["database"]["url"]
        _fail(f"cannot reach the database at {where} ({exc}); is it running? check ALIGND_DATABASE_URL")
        return 1
    except AlignmentError as exc:
        _fail(str(exc))
        return 1
    except Exception as exc:  # noqa: BLE001 - Kafka errors get advice; anything else its scrubbed traceback
        from kafka.errors import KafkaError

        if isinstance(exc, KafkaError):
            _fail(
                f"Kafka error: {exc}; check ALIGND_KAFKA_BOOTSTRAP_SERVERS "
                f"({mask_url_list(settings.kafka.bootstrap_servers)}) and the security settings"
            )
            return 1
        # A bug, or an error nobody translated (SQLAlchemy's for a URL it cannot parse quotes the URL): the
        # traceback Python would print, scrubbed, and its exit status.
        import traceback

        sys.stderr.write(scrub("".join(traceback.format_exception(exc))))
        return 1
