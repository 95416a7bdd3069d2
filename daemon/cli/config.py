"""``alignd config show``: the effective settings (file, environment, defaults), secrets masked."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from daemon.cli.command import AddCommand, group
from daemon.cli.output import print_json
from daemon.settings import Settings


def add_config_commands(commands: Any, add: AddCommand) -> None:
    cfg = group(commands, "config", "settings")
    add(cfg, "show", cmd_config_show, "print the effective settings, secrets masked")


def cmd_config_show(settings: Settings, args: argparse.Namespace) -> int:
    data = settings.redacted()
    if args.json:
        print_json(data)
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    return 0
