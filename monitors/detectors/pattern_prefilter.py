"""All the jailbreak pattern families in one pass over a text, with Hyperscan (Intel's multi-regex engine).

Python's ``re`` tries one regex at a time; even with the word gates of :mod:`pattern_search` a benign prompt
cost ~30 µs there, most of the light detectors' time. Hyperscan scans a text once for every family in C. It is
used as a *prefilter*: each regex is compiled in a form whose matches include every match Python's ``re``
would find (Hyperscan's ``HS_FLAG_PREFILTER``, plus :func:`widen`), so it names the families that *may* match;
``re`` then decides for those alone, and the answer is ``re``'s, unchanged.

Hyperscan ships wheels for x86-64 (Linux, Windows, macOS) and Apple silicon, not for Linux on ARM; where it is
missing, :func:`build` returns None and :mod:`pattern_search` uses its pure-Python gates.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence

try:
    import hyperscan
except ImportError:  # pragma: no cover - depends on the platform
    hyperscan = None

logger = logging.getLogger(__name__)

_NON_ASCII = r"\x{80}-\x{10FFFF}"
# Outside a class, each escape becomes a class holding every character Python's Unicode-aware escape matches (and
# more: every non-ASCII character); Python's \s also holds \x1c-\x1f, which PCRE's does not.
_WIDER = {"w": rf"[\w{_NON_ASCII}]", "s": rf"[\s\x1c-\x1f{_NON_ASCII}]", "d": rf"[\d{_NON_ASCII}]"}
_WIDER_IN_CLASS = {"w": rf"\w{_NON_ASCII}", "s": rf"\s\x1c-\x1f{_NON_ASCII}", "d": rf"\d{_NON_ASCII}"}
_BOUNDED = re.compile(r"\{(\d+),(\d+)\}")


def widen(pattern: str) -> str:
    """``pattern`` (Python ``re`` syntax) rewritten so that, read by Hyperscan without Unicode properties, it
    matches wherever Python would: word boundaries are dropped (Python's \\b sees non-ASCII letters, PCRE's
    does not, and dropping a condition only adds matches), \\w \\s \\d take every non-ASCII character, and a
    bounded repeat {m,n} becomes {m,} (bounded gaps between alternations made Hyperscan's compiler take 18 s for
    one family; unbounded, milliseconds). Inside a negated class the ASCII escapes already exclude less than
    Python's. Raises ValueError on what it cannot widen (\\W \\S \\D \\B, back-references)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = negated = False
    class_start = 0
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            esc = pattern[i + 1]
            if esc in "WSDB" or esc.isdigit() and esc != "0":
                raise ValueError(f"cannot widen \\{esc} in {pattern!r}")
            if in_class:
                out.append(_WIDER_IN_CLASS[esc] if esc in _WIDER_IN_CLASS and not negated else "\\" + esc)
            elif esc == "b":
                pass
            else:
                out.append(_WIDER.get(esc, "\\" + esc))
            i += 2
            continue
        if in_class:
            if ch == "]" and i > class_start:
                in_class = False
            out.append(ch)
            i += 1
            continue
        if ch == "[":
            in_class, negated = True, pattern.startswith("^", i + 1)
            class_start = i + 2 if negated else i + 1  # a "]" right after the opening is a literal
            out.append("[^" if negated else "[")
            i = class_start
            continue
        bounded = _BOUNDED.match(pattern, i) if ch == "{" else None
        if bounded is not None:
            out.append("{" + bounded.group(1) + ",}")
            i = bounded.end()
            continue
        out.append(ch)
        i += 1
    return "".join(out)


# Python's IGNORECASE matches these non-ASCII characters to ASCII letters (see jailbreak_text.fold);
# Hyperscan's caseless mode, without Unicode properties, does not, so they are spelled in ASCII before a scan.
_IGNORECASE_ASCII = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})
_FOLD_CHARS = frozenset(_IGNORECASE_ASCII)


class Prefilter:
    """A compiled set of named regexes: :meth:`candidates` names those that may match a text."""

    def __init__(self, patterns: Sequence[tuple[str, re.Pattern[str]]]) -> None:
        if hyperscan is None:
            raise RuntimeError("hyperscan is not installed")
        self.names = tuple(name for name, _ in patterns)
        flags = []
        for _, rx in patterns:
            if rx.flags & re.MULTILINE:  # not needed by any family; refuse rather than guess
                raise ValueError(f"MULTILINE is not supported: {rx.pattern!r}")
            flag = hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_UTF8 | hyperscan.HS_FLAG_SINGLEMATCH
            flag |= hyperscan.HS_FLAG_CASELESS if rx.flags & re.IGNORECASE else 0
            flag |= hyperscan.HS_FLAG_DOTALL if rx.flags & re.DOTALL else 0
            flags.append(flag)
        started = time.perf_counter()
        self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        self._db.compile(
            expressions=[widen(rx.pattern).encode() for _, rx in patterns],
            ids=list(range(len(patterns))),
            elements=len(patterns),
            flags=flags,
        )
        self._local = threading.local()  # a scratch space per thread: Hyperscan's scratch is not shared
        logger.debug("compiled %d patterns for hyperscan in %.2fs", len(patterns), time.perf_counter() - started)

    def _scratch(self) -> object:
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = hyperscan.Scratch(self._db)
        return scratch

    @staticmethod
    def _on_match(index: int, start: int, end: int, flags: int, found: list[int]) -> None:
        found.append(index)

    def candidates(self, text: str) -> set[str] | None:
        """Names of the patterns that may match ``text`` (a superset of those that do), or None when ``text``
        cannot be scanned (it holds lone surrogates, which are not UTF-8)."""
        if not text.isascii() and not _FOLD_CHARS.isdisjoint(text):
            text = text.translate(_IGNORECASE_ASCII)
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            return None
        found: list[int] = []
        self._db.scan(data, match_event_handler=self._on_match, context=found, scratch=self._scratch())
        names = self.names
        return {names[i] for i in found}


def build(patterns: Sequence[tuple[str, re.Pattern[str]]]) -> Prefilter | None:
    """A :class:`Prefilter`, or None where Hyperscan is not installed or cannot run here (its library refuses
    CPUs without SSSE3; the tests insist that it builds on the CI machine, so a pattern it cannot compile shows)."""
    if hyperscan is None:
        return None
    try:
        return Prefilter(patterns)
    except hyperscan.error as exc:
        logger.warning(
            "hyperscan cannot be used (%s: %s); the pure-Python pattern search is used", type(exc).__name__, exc
        )
        return None
