"""How every ``alignd`` command prints: JSON for ``--json``, aligned columns for people.

Data goes to standard output; progress and advice go to standard error, so that ``--json`` output stays
parseable when a command also says what it is doing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any


def print_json(data: Any, *, indent: int | None = 2) -> None:
    """``data`` as JSON on standard output (timestamps and other objects as their ``str``)."""
    sys.stdout.write(json.dumps(data, indent=indent, ensure_ascii=False, default=str) + "\n")


def columns(
    names: Sequence[str], rows: Sequence[Sequence[Any]], *, none: str | None = None, title: str | None = None
) -> None:
    """The CLI's one table style: plain aligned text under upper-case headers, a line per row.

    Not a rich table: rich wraps cells at 80 columns when piped, and a line per row is what ``| grep`` needs.
    ``title`` is a line above the headers. With no rows, ``none`` (a sentence saying what is empty and, where it
    helps, what would fill it) is printed instead of the headers, so an empty listing never draws an empty grid.
    """
    if title is not None:
        print(title)
    if not rows and none is not None:
        print(none)
        return
    cells = [[c.upper() for c in names], *[["" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(names))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def pairs(values: Mapping[str, Any], indent: str = "") -> None:
    """``key  value`` lines, the keys padded to one width; ``(none)`` for no values."""
    width = max((len(k) for k in values), default=0)
    for key, value in values.items():
        print(f"{indent}{key:<{width}}  {'' if value is None else value}")
    if not values:
        print(f"{indent}(none)")


def shorten(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def note(text: str) -> None:
    """A line for the person at the terminal, on standard error (``alignd: ...``), scrubbed of secrets."""
    from daemon.logs import scrub

    print(f"alignd: {scrub(text)}", file=sys.stderr, flush=True)
