"""What every command module shares: how a command joins the parser, the object graph it runs on, and the
error a user is shown as is."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any, Protocol

from daemon.bootstrap import App, build
from daemon.settings import Settings
from events.errors import AlignmentError

#: A command: the settings and its parsed arguments in, an exit status out.
Handler = Callable[[Settings, argparse.Namespace], int]


class CliError(AlignmentError):
    """An error to show the user as is, with exit status 2."""


class AddCommand(Protocol):
    """The shape of :func:`add_command`, which each ``add_*_commands`` is handed (tests hand their own)."""

    def __call__(
        self, sub: Any, name: str, handler: Handler, help_text: str, json_flag: bool = True
    ) -> argparse.ArgumentParser: ...


def add_command(
    sub: Any, name: str, handler: Handler, help_text: str, json_flag: bool = True
) -> argparse.ArgumentParser:
    """Add command ``name`` to the subparsers ``sub``; it runs ``handler``, and takes ``--json`` unless told not."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(handler=handler)
    if json_flag:
        p.add_argument("--json", action="store_true", help="print JSON")
    return p


def group(commands: Any, name: str, help_text: str, metavar: str = "ACTION") -> Any:
    """A command group (``alignd NAME ACTION``): the subparsers its actions are added to."""
    return commands.add_parser(name, help=help_text).add_subparsers(
        dest=f"{name}_command", required=True, metavar=metavar
    )


def with_app(command: Callable[[App, argparse.Namespace], int]) -> Handler:
    """``command`` run on the object graph built from the settings (daemon/bootstrap.py), closed when it returns.

    The graph makes only the parts the command asks for; closing it disposes the store's engine if one was opened.
    """

    @functools.wraps(command)
    def handler(settings: Settings, args: argparse.Namespace) -> int:
        with build(settings) as app:
            return command(app, args)

    return handler
