"""The Hyperscan prefilter names every pattern Python's re would match (and may name more)."""

from __future__ import annotations

import random
import re

import pytest

from monitors.detectors.pattern_prefilter import Prefilter, widen
from tests.helpers import HYPERSCAN_EXPECTED, require

NON_ASCII = r"\x{80}-\x{10FFFF}"


@pytest.mark.parametrize(
    ("pattern", "widened"),
    [
        (r"\bignore\b", "ignore"),
        (r"a\w+b", rf"a[\w{NON_ASCII}]+b"),
        (r"###\s*x", rf"###[\s\x1c-\x1f{NON_ASCII}]*x"),
        (r"\d\d", rf"[\d{NON_ASCII}][\d{NON_ASCII}]"),
        (r"[\w@-]{3,}", rf"[\w{NON_ASCII}@-]{{3,}}"),
        (r"[^\s.,]+", r"[^\s.,]+"),  # negated: the ASCII escape already excludes less than Python's
        (r"x[^.\n]{0,40}?y", r"x[^.\n]{0,}?y"),
        (r"[]\b]", r"[]\b]"),  # a "]" first in a class is a literal; \b in a class is a backspace
        (r"\[(a|b)\]\{x\}", r"\[(a|b)\]\{x\}"),
        (r"[ _\\-]*mode", r"[ _\\-]*mode"),
        (r"(?-i:[A-Z][\w-]*)", rf"(?-i:[A-Z][\w{NON_ASCII}-]*)"),
    ],
)
def test_widen_rewrites_what_pcre_reads_differently(pattern: str, widened: str) -> None:
    assert widen(pattern) == widened


@pytest.mark.parametrize("pattern", [r"\W", r"a\Sb", r"\D", r"\Bx", r"(a)\1"])
def test_widen_refuses_what_it_cannot_make_wider(pattern: str) -> None:
    with pytest.raises(ValueError, match="cannot widen"):
        widen(pattern)


def _prefilter(**patterns: str) -> Prefilter:
    require("hyperscan", in_ci=HYPERSCAN_EXPECTED)
    return Prefilter([(name, re.compile(p, re.IGNORECASE | re.DOTALL)) for name, p in patterns.items()])


def test_unicode_words_spaces_and_case_that_python_matches_are_candidates() -> None:
    pf = _prefilter(word=r"\bcaf\w\b", space=r"###\s*system", kelvin=r"\bkey\b", gap=r"ab[^.\n]{0,3}cd")
    assert pf.candidates("un café noir") == {"word"}  # é is a word character to Python, not to PCRE
    assert pf.candidates("###\u00a0SYSTEM") == {"space"}  # a no-break space, and case
    assert pf.candidates("###\x1csystem") == {"space"}  # Python's \s holds the file separators
    assert pf.candidates("the \u212aEY") == {"kelvin"}  # Python's IGNORECASE reads the Kelvin sign as k
    assert "gap" in pf.candidates("ab\u00e9\u00e9\u00e9cd")  # a gap counts characters, not UTF-8 bytes
    assert pf.candidates("nothing to see") == set()


def test_text_that_is_not_utf8_cannot_be_scanned() -> None:
    pf = _prefilter(x="x")
    assert pf.candidates("x\ud800") is None  # a lone surrogate: the caller searches with re instead


def test_candidates_include_every_python_match_on_random_unicode_text() -> None:
    patterns = {
        "boundary": r"\b(you are|act as)\b [\"“']?(?-i:[A-Z][\w-]*)",
        "gap": r"\b(ignore|forget)\b[^.\n]{0,10}?\b(rules|instructions)\b",
        "spaces": r"\bnew\s+rules\s*:",
        "lookahead": r"\bDAN\b(?=[^.\n]{0,20}\bmode\b)",
    }
    pf = _prefilter(**patterns)
    compiled = {name: re.compile(p, re.IGNORECASE | re.DOTALL) for name, p in patterns.items()}
    words = ["you are", "act as", "Zed", "zed", "ZED", "ignore", "forget", "rules", "instructions", "new", "DAN",
             "dan", "mode", "\u212aEY", "\u0131t", "caf\u00e9", "\u6771\u4eac", "\u201cZed", "'Zed", "x9", "_"]  # fmt: skip
    glue = [" ", " ", " ", "  ", "\u00a0", "\x1c", "", ".", "\n", "-", ":", "\u00e9", "\u0301", " x "]  # fmt: skip
    rng = random.Random(11)
    matched = 0
    for _ in range(3000):
        text = "".join(rng.choice(words) + rng.choice(glue) for _ in range(rng.randint(1, 8)))
        expected = {name for name, rx in compiled.items() if rx.search(text)}
        got = pf.candidates(text)
        assert got is not None and expected <= got, text
        matched += len(expected)
    assert matched > 100  # the random texts do reach the patterns (180 with this seed)


def test_a_hyperscan_that_cannot_run_here_leaves_the_pure_python_search(monkeypatch: pytest.MonkeyPatch) -> None:
    import monitors.detectors.pattern_prefilter as pp

    hs = require("hyperscan", in_ci=HYPERSCAN_EXPECTED)

    def refuse(self: object, patterns: object) -> None:
        raise hs.ArchitectureError("no SSSE3")

    monkeypatch.setattr(pp.Prefilter, "__init__", refuse)
    assert pp.build([("x", re.compile("x"))]) is None
