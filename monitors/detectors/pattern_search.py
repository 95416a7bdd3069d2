"""Find the jailbreak pattern families in a prompt, and score it.

:func:`score_patterns` matches the families of :mod:`jailbreak_patterns` against every reading of a prompt
(:func:`jailbreak_text.normalise`) and combines their weights as a noisy-or. The families are searched in one
pass with Hyperscan where it is installed (:mod:`pattern_prefilter`), else with the pure-Python word gates below;
either way Python's ``re`` decides, so both give the same answers.
"""

from __future__ import annotations

import functools
import re
import re._constants as _C
import re._parser as _parser
from dataclasses import dataclass

from monitors.detectors import pattern_prefilter
from monitors.detectors.jailbreak_patterns import (
    ANCHORS,
    BIGRAM_GATES,
    FRAMINGS,
    HARMFUL_TOPIC,
    HIDDEN_HIT_WEIGHT,
    OBFUSCATION_WEIGHT,
    PATTERN_NAMES,
    PATTERNS,
    SYMBOL_GATES,
    SYMBOL_GATES_ALL,
    WEIGHTS,
    WORD_GATES,
    Anchor,
)
from monitors.detectors.jailbreak_text import Normalised, fold, normalise, utf8

# --- the pure-Python gates, used where Hyperscan is not installed ---------------------------------------------

_GATE_KEYS: dict[str, frozenset[str]] = {}  # a literal a word starts with -> families
for _family, _literals in WORD_GATES.items():
    for _literal in _literals:
        _GATE_KEYS[_literal] = _GATE_KEYS.get(_literal, frozenset()) | {_family}
_GATE_LENGTHS = sorted({len(k) for k in _GATE_KEYS})
_NOT_LETTER = bytes(c if 97 <= c <= 122 else 32 for c in range(256))  # in UTF-8, non-ASCII bytes are >= 0x80


_BIGRAMS: dict[str, list[tuple[bytes, frozenset[str]]]] = {}  # first word -> (b" first second ", families)
for (_first, _second), _opened in BIGRAM_GATES.items():
    _BIGRAMS.setdefault(_first, []).append((f" {_first} {_second} ".encode(), _opened))
_BIGRAM_MARK = {first: f"<bigram {first}>" for first in _BIGRAMS}  # in a word's families: it opens bigrams
_BIGRAM_MARKS = frozenset(_BIGRAM_MARK.values())


class _TokenFamilies(dict[bytes, frozenset[str]]):
    """Word (a run of ASCII letters) -> the families it opens the gate of, and its _BIGRAM_MARK (memoised)."""

    def __missing__(self, token: bytes) -> frozenset[str]:
        word = token.decode("ascii")
        found = frozenset().union(*(_GATE_KEYS.get(word[:n], ()) for n in _GATE_LENGTHS if n <= len(word)))
        if word in _BIGRAM_MARK:
            found |= {_BIGRAM_MARK[word]}
        if len(self) < 100_000:
            self[token] = found
        return found


_TOKEN_FAMILIES = _TokenFamilies()


def _gate(folded: str) -> tuple[set[str], list[bytes]]:
    """(families whose regex may match the text that folds to ``folded``, a superset; the words of ``folded``)."""
    ascii_text = folded.isascii()
    tokens = utf8(folded).translate(_NOT_LETTER).split()
    families: set[str] = set().union(*map(_TOKEN_FAMILIES.__getitem__, tokens))
    marks = families & _BIGRAM_MARKS
    if marks:
        families -= marks
        spaced = b" " + b" ".join(tokens) + b" "  # one space between words in a row
        for first, mark in _BIGRAM_MARK.items():
            if mark in marks:
                for bigram, opened in _BIGRAMS[first]:
                    if spaced.find(bigram) >= 0:  # see jailbreak_text._decode_runs
                        families.update(opened)
    for symbol, names in SYMBOL_GATES.items() if ascii_text else SYMBOL_GATES_ALL.items():
        if symbol in folded:
            families.update(names)
    return families, tokens


# Where a family can match. re tries a regex that opens with \b or a group at every character (no literal prefix
# to skip ahead with), which was most of the pattern time; instead the literals that every match of a family starts
# with are derived from its parsed regex (so they cannot drift from it), found with str.find in the folded text,
# and the regex is tried only there. A literal that needs a word boundary before it and opens with a word is
# looked for only when the text has that word (from _gate), and is not tried inside a word.
_BOUNDARY = "\x00"  # marks a \b inside a derived literal


def _openings(items: list, cap: int = 8) -> set[tuple[str, bool]]:
    """(literal, whether it spans all of ``items``) pairs such that every match of the parsed regex ``items``
    starts with one of the literals (_BOUNDARY where the regex asserts \\b). Other zero-width assertions are
    skipped (dropping a condition keeps the literals necessary); a literal is lengthened while that does not
    multiply the candidates beyond ``cap``."""
    found = {("", True)}
    for op, av in items:
        if not any(whole for _, whole in found):
            break
        nxt: set[tuple[str, bool]] | None
        if op is _C.AT:
            nxt = {(_BOUNDARY, True)} if av is _C.AT_BOUNDARY else {("", True)}
        elif op in (_C.ASSERT, _C.ASSERT_NOT):
            continue
        elif op is _C.LITERAL:
            nxt = {(chr(av), True)}
        elif op is _C.SUBPATTERN:
            nxt = _openings(av[3].data, cap)
        elif op is _C.BRANCH:
            nxt = set().union(*(_openings(branch.data, cap) for branch in av[1]))
        elif op in (_C.MAX_REPEAT, _C.MIN_REPEAT, _C.POSSESSIVE_REPEAT):
            lo, hi, item = av
            inner = _openings(item.data, cap)
            nxt = inner if hi == 1 else {(lit, False) for lit, _ in inner}
            nxt |= {("", True)} if lo == 0 else set()
        elif op is _C.IN and len(av) <= 8 and all(o is _C.LITERAL for o, _ in av):
            nxt = {(chr(c), True) for _, c in av}
        else:
            nxt = None
        longer = None if nxt is None else {(a + b, w) for a, whole in found if whole for b, w in nxt}
        if longer is None or (len(longer) > max(cap, len(found)) and any(a.strip(_BOUNDARY) for a, _ in found)):
            return {(a, False) for a, _ in found}
        found = longer | {(a, w) for a, w in found if not w}
    return found


_LEAD = re.compile(f"{_BOUNDARY}([a-z]+)(.?)", re.DOTALL)


@dataclass(frozen=True)
class _Starts:
    """How a regex can start: ``by_word`` maps a word to the (folded) literals that open with it after a word
    boundary, to be looked for only when the text has that word; ``other``: the remaining literals, always looked
    for; ``unbounded``: the literals opening with a letter that need no boundary before them."""

    by_word: dict[bytes, tuple[str, ...]]
    other: tuple[str, ...]
    unbounded: frozenset[str]


def _starts(rx: re.Pattern[str]) -> _Starts | None:
    """None if some match of ``rx`` may start with anything. A case-insensitive match of a literal implies the
    folded literal at the same place of the folded text (the literals are ASCII or caseless)."""
    marked = sorted({lit.lower() for lit, _ in _openings(_parser.parse(rx.pattern, rx.flags).data)}, key=len)
    if not marked or not marked[0].replace(_BOUNDARY, ""):
        return None
    assert all(c.isascii() or c.lower() == c.upper() for lit in marked for c in lit), rx.pattern
    groups: dict[bytes | None, list[str]] = {}  # word the literal needs in the text (None: none) -> literals
    for lit in marked:
        lead = _LEAD.match(lit)
        groups.setdefault(lead.group(1).encode() if lead is not None and lead.group(2) else None, []).append(lit)
    kept: dict[bytes | None, list[str]] = {}
    for word, lits in groups.items():
        for lit in lits:  # a shorter literal looked for as often finds every place a longer one does, unless only
            core = lit.replace(_BOUNDARY, "")  # it needs a boundary
            if not any(core.startswith(k.replace(_BOUNDARY, "")) and (k[0] != _BOUNDARY or lit[0] == _BOUNDARY)
                       for k in (*kept.get(None, ()), *kept.get(word, ()))):  # fmt: skip
                kept.setdefault(word, []).append(lit)
    other = tuple(dict.fromkeys(lit.replace(_BOUNDARY, "") for lit in kept.get(None, ())))
    by_word = {w: tuple(dict.fromkeys(lit.replace(_BOUNDARY, "") for lit in lits)) for w, lits in kept.items() if w}
    unbounded = frozenset(lit.replace(_BOUNDARY, "") for lit in marked if lit[0] != _BOUNDARY and lit[0].isalpha())
    return _Starts(by_word, other, unbounded)


def _search(rx: re.Pattern[str], starts: _Starts | None, text: str, folded: str, words: set[bytes]) -> bool:
    """``rx.search(text) is not None``, with ``rx`` tried only where a match can start (``words``: those of
    ``folded``, see _gate)."""
    if starts is None:
        return rx.search(text) is not None
    find, match = folded.find, rx.match
    literals = [lit for w in words & starts.by_word.keys() for lit in starts.by_word[w]]
    for literal in (*literals, *starts.other):
        # a literal opening with a letter after a word character (re's \w) matches only where it needs no boundary
        skip_inner = literal[0].isalpha() and literal not in starts.unbounded
        i = find(literal)
        while i >= 0:
            if not (skip_inner and i and (text[i - 1].isalnum() or text[i - 1] == "_")) and match(text, i):
                return True  # match(text, i) sees the text before i, as search does
            i = find(literal, i + 1)
    return False


_PREFILTERED = {name: (rx, ANCHORS.get(name), _starts(rx)) for name, _, rx in PATTERNS}
assert all(starts is not None for *_, starts in _PREFILTERED.values())
_HARMFUL_STARTS = _starts(HARMFUL_TOPIC)


def _possible(anchor: tuple[Anchor, ...], haystack: str) -> bool:
    for conj in anchor:
        for group in conj:
            for literal in group:
                if literal in haystack:
                    break
            else:
                break  # no literal of this group: the conjunction fails
        else:
            return True
    return False


_HARMFUL = "<harmful topic>"  # the prefilter's name for HARMFUL_TOPIC
_REGEXES = {**{name: rx for name, _, rx in PATTERNS}, _HARMFUL: HARMFUL_TOPIC}


@functools.cache
def _prefilter() -> pattern_prefilter.Prefilter | None:
    """Built once, on first use, not at import: most commands that import this never scan a prompt."""
    return pattern_prefilter.build(tuple(_REGEXES.items()))


def prepare_patterns() -> None:
    """Compile the one-pass pattern search now (~0.5 s with Hyperscan), so that the first prompt is not slow."""
    _prefilter()


def _families(text: str, skip: set[str]) -> set[str]:
    """The families (not in ``skip``) whose regex matches ``text``, and framed_harm."""
    prefilter = _prefilter()
    candidates = prefilter.candidates(text) if prefilter is not None else None
    if candidates is None:
        return _gated_families(text, skip)
    todo = candidates - skip
    todo.discard(_HARMFUL)
    if not todo:
        return set()
    # re decides, tried only where a match can start (on long jailbreak texts a plain search of each named
    # family cost more than the scan saved)
    folded = fold(text)
    aligned = len(folded) == len(text)  # always, see fold; otherwise search everywhere
    words = set(utf8(folded).translate(_NOT_LETTER).split())
    found = {
        name
        for name in todo
        if _search(_REGEXES[name], _PREFILTERED[name][2] if aligned else None, text, folded, words)
    }
    if found & FRAMINGS and _HARMFUL in candidates:
        if _search(HARMFUL_TOPIC, _HARMFUL_STARTS if aligned else None, text, folded, words):
            found.add("framed_harm")
    return found


def _gated_families(text: str, skip: set[str]) -> set[str]:
    """:func:`_families` in pure Python, where Hyperscan is not installed: the word gates, anchors and opening
    literals above."""
    folded = fold(text)
    gated, tokens = _gate(folded)
    if not gated:
        return set()
    words: set[bytes] | None = None
    aligned = len(folded) == len(text)  # always, see fold; otherwise search everywhere
    found = set()
    for name in gated - skip if skip else gated:
        rx, anchor, starts = _PREFILTERED[name]
        if anchor is None or _possible(anchor, folded):
            words = set(tokens) if words is None else words
            if _search(rx, starts if aligned else None, text, folded, words):
                found.add(name)
    if found & FRAMINGS and _search(HARMFUL_TOPIC, _HARMFUL_STARTS if aligned else None, text, folded, set(tokens)):
        found.add("framed_harm")
    return found


@dataclass(frozen=True)
class PatternScore:
    score: float  # noisy-or of the weights of the families hit, in [0, 1)
    hits: tuple[str, ...]  # families matched (in the text or in a variant)
    hidden_hits: tuple[str, ...]  # families matched only in a decoded or de-obfuscated variant
    obfuscations: tuple[str, ...]


_NOTHING = PatternScore(score=0.0, hits=(), hidden_hits=(), obfuscations=())


def score_patterns(prompt: str | Normalised) -> PatternScore:
    """Score a prompt (raw or already normalised) against the jailbreak pattern families."""
    norm = prompt if isinstance(prompt, Normalised) else normalise(prompt)
    weights = WEIGHTS
    visible: set[str] = set()
    hidden: set[str] = set()
    for i, text in enumerate((norm.text, *norm.variants)):
        found = _families(text, visible)
        (visible if i == 0 else hidden).update(found - visible)
    if not visible and not hidden and not norm.obfuscations:
        return _NOTHING  # most prompts: no need to build a dataclass
    keep = 1.0
    for name in visible | hidden:
        keep *= 1.0 - weights[name]
    for _ in norm.obfuscations:
        keep *= 1.0 - OBFUSCATION_WEIGHT
    if hidden and norm.obfuscations and max(weights[h] for h in hidden) >= 0.4:
        keep *= 1.0 - HIDDEN_HIT_WEIGHT
    ordered = tuple(n for n in PATTERN_NAMES if n in visible | hidden)
    return PatternScore(
        score=round(1.0 - keep, 4),
        hits=ordered,
        hidden_hits=tuple(n for n in PATTERN_NAMES if n in hidden),
        obfuscations=norm.obfuscations,
    )
