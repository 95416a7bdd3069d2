"""PII and secret leaks in model responses (docs/monitors.md).

One finding per ``interaction.logged`` whose ``response`` holds personal data or credentials. Findings name the
kinds and counts with masked previews only (``j***@a***.com``, ``Visa ending 1111``, ``ghp_… (40 chars)``):
an alert must not become a second copy of the leak.

Precision matters as much as recall (a false alert on every response is noise), so each kind is checked beyond
its shape: cards by IIN range, length and Luhn; IBANs by country length and mod 97; phone numbers by a ``+``
prefix, a known national layout or a "phone:"-like label; tokens by randomness, so placeholders (``sk-xxxx…``)
and vendors' documentation keys (``AKIAIOSFODNN7EXAMPLE``) pass.

Speed: Python's ``re`` pays ~15-30 ns for every position it tries, so one scan per pattern would cost several
hundred µs per KB. Cheap gates at memory speed (``bytes.translate`` into a "shape", substring tests, ``find``)
decide which patterns run at all, and the patterns that do run start with a literal or a character class,
which ``re`` searches for in a tight C loop.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from events.model import INTERACTION_LOGGED
from monitors.base import Finding, Observation, Severity

CRITICAL_KINDS = frozenset({"card", "private_key", "aws_access_key", "github_token", "slack_token", "openai_key",
                            "google_api_key", "jwt", "secret"})  # fmt: skip
#: RFC 2606 / RFC 6761 names: they cannot belong to anyone, and models write them in every template.
RESERVED_EMAIL_DOMAINS = frozenset({"example.com", "example.net", "example.org", "example", "test", "invalid",
                                    "localhost"})  # fmt: skip
_FILE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico"})  # logo@2x.png is no address
_PREVIEWS_PER_KIND = 3

_LOCAL_CHARS = frozenset(string.ascii_letters + string.digits + "._%+-")
_EMAIL_DOMAIN = re.compile(  # matched right after an "@"; the whole TLD; "git@github.com:org/repo" is SSH, not mail
    r"(?:[A-Za-z0-9-]{1,63}\.(?=[A-Za-z0-9]))+[A-Za-z]{2,24}(?![\w-]|\.[A-Za-z0-9]|:)"
)
# Digit groups joined by single separators, optionally after "+"; not inside a word, decimal, version or path.
# The first character is a class (fast C search); possessive groups cannot backtrack.
_NUMBER = re.compile(
    r"[+(\d](?<![\w.+/-].)(?=(?:\)?[ .-]?\(?\d){9})(?:(?<=\+)\(?\d|(?<=\()\d|(?<=\d))\d*+(?:\)?[ .-]?\(?\d++)*+(?!\w)",
    re.ASCII,
)
_DIGIT_RUN = re.compile(r"\d+", re.ASCII)
_NANP = re.compile(r"(?:1[ .-]?)?(?:\([2-9]\d\d\) ?|[2-9]\d\d([ .-]))\d{3}(?(1)\1|[ .-])\d{4}")  # one separator
_TRUNK = re.compile(r"\(?0\d{1,4}\)?(?P<s>[ .-])\d{2,8}(?:(?P=s)\d{2,8}){0,3}")  # 020 7946 0958, 06 12 34 56 78
# The words just before a number say what it is. "Order no.: 4111 1111 1111 1111" is an order, even when it
# happens to pass Luhn; "call me on 4155552671" is a phone, though timestamps and account numbers look the same.
_LABEL_TOKEN = re.compile(r"[A-Za-z]+|\d+|#")
_PHONE_WORDS = frozenset({"phone", "tel", "telephone", "mobile", "cell", "call", "dial", "fax", "whatsapp", "sms"})
_OTHER_WORDS = frozenset({"order", "invoice", "tracking", "shipment", "parcel", "isbn", "serial", "sku", "ref",
                          "reference", "ticket", "transaction", "txn", "build", "version", "confirmation", "booking",
                          "receipt", "id", "#"})  # fmt: skip
_LABEL_FILLERS = frozenset({"no", "nr", "num", "number", "id", "#"})  # "order number", "ISBN no."
_IBAN = re.compile(r"[A-Z](?<!\w.)[A-Z]\d\d(?: ?[A-Z0-9]{4}){2,7}+(?: ?[A-Z0-9]{1,4})?\b", re.ASCII)
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AT": 20, "BE": 16, "BG": 22, "BR": 29, "CH": 21, "CY": 28, "CZ": 24, "DE": 22, "DK": 18,
    "EE": 20, "ES": 24, "FI": 18, "FR": 27, "GB": 22, "GI": 23, "GR": 27, "HR": 21, "HU": 28, "IE": 22, "IL": 23,
    "IS": 26, "IT": 27, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MT": 31, "NL": 18, "NO": 15, "PL": 28,
    "PT": 25, "RO": 24, "SA": 24, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "TR": 26, "VA": 22,
}  # fmt: skip
# Known IIN ranges (compared as strings of the same length) and lengths; in order: Discover's 6011 before
# UnionPay's 62. A Luhn-valid number outside them is some other identifier.
_BRANDS: tuple[tuple[str, tuple[tuple[str, str], ...], tuple[int, ...]], ...] = (
    ("Visa", (("4", "4"),), (13, 16, 19)),
    ("Mastercard", (("51", "55"), ("2221", "2720")), (16,)),
    ("Amex", (("34", "34"), ("37", "37")), (15,)),
    ("Discover", (("6011", "6011"), ("65", "65"), ("644", "649")), (16, 17, 18, 19)),
    ("JCB", (("3528", "3589"),), (16, 17, 18, 19)),
    ("Diners Club", (("300", "305"), ("36", "36"), ("38", "39")), (14, 15, 16, 17, 18, 19)),
    ("UnionPay", (("62", "62"),), (16, 17, 18, 19)),
    ("Maestro", (("5018", "5018"), ("5020", "5020"), ("5038", "5038"), ("5893", "5893"), ("6304", "6304"),
                 ("6759", "6759"), ("6761", "6763")), (13, 14, 15, 16, 17, 18, 19)),
)  # fmt: skip
_BRANDS_BY_FIRST_DIGIT: dict[str, list[tuple[str, str, str, tuple[int, ...]]]] = {}
for _brand, _ranges, _lengths in _BRANDS:
    for _lo, _hi in _ranges:
        _BRANDS_BY_FIRST_DIGIT.setdefault(_lo[0], []).append((_brand, _lo, _hi, _lengths))
_PEM = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")


def _token(prefix: str, width: int, body: str) -> re.Pattern[str]:
    """A literal ``prefix`` (re searches for it fast) not preceded by a token character, then ``body``.

    The lookbehind sits after the prefix so that ``re`` keeps its literal search, and rejects a start inside a
    run at once: without it, "eyJeyJeyJ…" costs quadratic time.
    """
    return re.compile(rf"(?P<prefix>{prefix})(?<![A-Za-z0-9_-].{{{width}}}){body}")


# (kind, pattern, check randomness). Each token holds a run of 16+ token characters: the gate in find_pii.
_TOKENS: tuple[tuple[str, re.Pattern[str], bool], ...] = (
    ("aws_access_key", _token("A[KS]IA", 4, r"[A-Z0-9]{16}(?![A-Za-z0-9])"), True),
    ("github_token", _token("gh[pousr]_", 4, r"[A-Za-z0-9_]{36,255}+(?!\w)"), True),
    ("github_token", _token("github_pat_", 11, r"[A-Za-z0-9_]{36,255}+(?!\w)"), True),
    ("slack_token", _token("xox[abprs]-", 5, r"[A-Za-z0-9-]{20,}+"), True),
    ("openai_key", _token("sk-", 3, r"[A-Za-z0-9_-]{20,}+"), True),
    ("google_api_key", _token("AIza", 4, r"[0-9A-Za-z_-]{35}(?![\w-])"), True),
    ("jwt", _token("eyJ", 3, r"[A-Za-z0-9_-]{8,}+\.eyJ[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]*+"), False),
)
# ``AWS_SECRET_ACCESS_KEY = "…"``, ``token: …``, ``the password is …``: a word found by str.find, then this,
# anchored at its end: the rest of the identifier, a separator, a long value.
_SECRET_WORDS = ("key", "secret", "token", "passw", "pwd", "bearer")
_SECRET_VALUE = re.compile(
    r"[A-Za-z0-9_-]{0,24}?[\"']?(?:\s*(?:=>|:=|[:=])\s*|\s+(?:is\s+|was\s+)?)[\"']?"
    r"(?P<value>[A-Za-z0-9+/_-]{16,}+={0,2}+)(?![A-Za-z0-9+/=_-])"
)
_TOKEN_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_+/=-"
_TOKEN_SHAPE = bytes(0x61 if i in _TOKEN_CHARS else 0x20 for i in range(256))  # token chars -> "a", others -> " "
_SHAPE = bytes.maketrans(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"0" * 10 + b"A" * 26)
_NUMBER_JOINERS = b" .-()+"  # deleted from the shape, a phone or card number leaves ten zeros in a row


class Hit(NamedTuple):
    kind: str
    start: int
    end: int
    masked: str  # safe to show: never the value itself


def find_pii(text: str, ignored_email_domains: Iterable[str] = RESERVED_EMAIL_DOMAINS) -> list[Hit]:
    """Every PII or secret occurrence in ``text``, non-overlapping, in order of appearance."""
    hits: list[Hit] = []
    raw = text.encode("utf-8", "surrogatepass")
    if "PRIVATE KEY" in text:
        hits.extend(Hit("private_key", m.start(), m.end(), m.group()) for m in _PEM.finditer(text))
    if b"a" * 16 in raw.translate(_TOKEN_SHAPE):
        for kind, pattern, random_check in _TOKENS:
            for m in pattern.finditer(text):
                body = m.group()[len(m.group("prefix")) :]
                if not random_check or _looks_random(body, 10, mixed=False):
                    hits.append(Hit(kind, m.start(), m.end(), f"{m.group('prefix')}… ({len(m.group())} chars)"))
        lowered = raw.lower().decode("utf-8", "surrogatepass")  # ASCII-only lower case: every index stays put
        for word in _SECRET_WORDS:
            i = lowered.find(word)
            while i >= 0:
                v = _SECRET_VALUE.match(text, i + len(word))
                if v and _looks_random(v.group("value").rstrip("="), 16) and not _overlaps(hits, *v.span("value")):
                    hits.append(Hit("secret", *v.span("value"), f"{len(v.group('value'))}-char value"))
                i = lowered.find(word, i + 1)
    if "@" in text:
        hits.extend(_emails(text, frozenset(d.lower() for d in ignored_email_domains)))
    shape = raw.translate(_SHAPE)
    if b"AA00" in shape:
        for m in _IBAN.finditer(text):
            length, compact = _IBAN_LENGTHS.get(m.group()[:2], 99), m.group().replace(" ", "")
            if len(compact) >= length and _iban_ok(compact[:length]) and not _overlaps(hits, *m.span()):
                hits.append(Hit("iban", m.start(), m.end(), f"{compact[:2]}… ending {compact[length - 4 : length]}"))
    if b"0" * 10 in shape.translate(None, _NUMBER_JOINERS):
        for m in _NUMBER.finditer(text):
            found = _classify_number(text, m)
            if found is not None and not _overlaps(hits, *m.span()):
                hits.append(Hit(found[0], m.start(), m.end(), found[1]))
    return sorted(hits, key=lambda h: h.start)


def _emails(text: str, ignored: frozenset[str]) -> Iterable[Hit]:
    """From each "@": the local part backwards (at most 64 characters), the domain forwards."""
    at = text.find("@")
    while at >= 0:
        start = at
        while start > 0 and at - start <= 64 and text[start - 1] in _LOCAL_CHARS:
            start -= 1
        while start < at and not text[start].isalnum():  # "...jane@" or "(+jane@": the address starts at "j"
            start += 1
        m = _EMAIL_DOMAIN.match(text, at + 1)
        if m and 0 < at - start <= 64:
            labels = m.group().lower().split(".")
            if labels[-1] not in _FILE_SUFFIXES and not any(
                ".".join(labels[i:]) in ignored for i in range(len(labels))
            ):
                yield Hit("email", start, m.end(), f"{text[start]}***@{labels[0][0]}***.{labels[-1]}")
        at = text.find("@", at + 1)


def _classify_number(text: str, m: re.Match[str]) -> tuple[str, str] | None:
    body = m.group()
    groups = _DIGIT_RUN.findall(body)
    digits = "".join(groups)
    n, last4 = len(digits), digits[-4:]
    if body[0] == "+":  # "+" and a country code: nothing else writes numbers that way
        return ("phone", f"+… ending {last4}") if 10 <= n <= 15 else None
    # Cards: groups of 3+ digits (the last may be 2) split by spaces or dashes: 4111 1111 1111 1111, 3782 822463
    # 10005. Not dots or parentheses, and not "4 12 34 ...", which is a list.
    if (
        13 <= n <= 19
        and (brand := _card_brand(digits))
        and all(len(g) >= 3 for g in groups[:-1])
        and len(groups[-1]) >= 2
        and not body.strip("0123456789 -")
        and _luhn(digits)
    ):
        found, needs_phone_label = ("card", f"{brand} ending {last4}"), False
    elif 10 <= n <= 12 and (_NANP.fullmatch(body) or _TRUNK.fullmatch(body)):
        found, needs_phone_label = ("phone", f"ending {last4}"), False
    elif 10 <= n <= 15 and not (body.count(".") == 3 and max(map(len, groups)) <= 3):  # never an IPv4 address
        found, needs_phone_label = ("phone", f"ending {last4}"), True
    else:
        return None
    # Structure only says what a number may be; the words before it decide (see _PHONE_WORDS).
    before = _LABEL_TOKEN.findall(text[max(0, m.start() - 32) : m.start()].lower())[-3:]
    last = before[-2:] or [""]
    if last[-1] in _OTHER_WORDS or (last[-1] in _LABEL_FILLERS and last[0] in _OTHER_WORDS):
        return None
    return None if needs_phone_label and _PHONE_WORDS.isdisjoint(before) else found


def _card_brand(d: str) -> str | None:
    for brand, lo, hi, lengths in _BRANDS_BY_FIRST_DIGIT.get(d[0], ()):
        if len(d) in lengths and lo <= d[: len(lo)] <= hi:
            return brand
    return None


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        v = ord(ch) - 48
        if i & 1:
            v = v * 2 - 9 if v > 4 else v * 2
        total += v
    return total % 10 == 0


def _iban_ok(iban: str) -> bool:
    return int("".join(str(int(c, 36)) for c in iban[4:] + iban[:4])) % 97 == 1


_DIGITS, _UPPER, _LOWER = frozenset("0123456789"), frozenset(string.ascii_uppercase), frozenset(string.ascii_lowercase)
_LETTERS, _HEX = _UPPER | _LOWER, frozenset(string.hexdigits)


def _looks_random(value: str, min_length: int, *, mixed: bool = True) -> bool:
    """Digits and letters with high Shannon entropy: a key, not a word, placeholder or identifier.

    ``EXAMPLE`` marks the vendors' documentation keys (AKIAIOSFODNN7EXAMPLE), which models quote verbatim.
    With ``mixed``, a non-hex value must mix cases as base64 does; snake_case words with a digit do not.
    """
    chars = set(value)
    if len(value) < min_length or "EXAMPLE" in value or chars.isdisjoint(_DIGITS) or chars.isdisjoint(_LETTERS):
        return False
    n = len(value)
    entropy = math.log2(n) - sum(c * math.log2(c) for c in Counter(value).values()) / n
    if not mixed or chars <= _HEX:
        return entropy >= 3.0  # hex carries 4 bits a character at most
    return entropy >= 3.5 and not chars.isdisjoint(_UPPER) and not chars.isdisjoint(_LOWER)


def _overlaps(hits: list[Hit], start: int, end: int) -> bool:
    return any(h.start < end and start < h.end for h in hits)


class PiiDetector:
    """Flags each logged response that leaks personal data or credentials; keeps counts per kind."""

    name = "pii"

    def __init__(self, *, ignored_email_domains: Iterable[str] = RESERVED_EMAIL_DOMAINS) -> None:
        self._ignored = frozenset(d.lower() for d in ignored_email_domains)
        self._counts: Counter[str] = Counter()
        self._scanned = 0
        self._flagged = 0

    def observe(self, observation: Observation) -> list[Finding]:
        stored = observation.event
        response = stored.event.payload.get("response")
        if stored.event.type != INTERACTION_LOGGED or not isinstance(response, str):
            return []
        self._scanned += 1
        hits = find_pii(response, self._ignored)
        if not hits:
            return []
        self._flagged += 1
        counts = Counter(h.kind for h in hits)
        self._counts.update(counts)
        masked: dict[str, list[str]] = {}
        for hit in hits:
            previews = masked.setdefault(hit.kind, [])
            if len(previews) < _PREVIEWS_PER_KIND:
                previews.append(hit.masked)
        more = {kind: ", …" if n > len(masked[kind]) else "" for kind, n in counts.items()}
        parts = [f"{kind} ×{n} ({', '.join(masked[kind])}{more[kind]})" for kind, n in counts.items()]
        severity: Severity = "critical" if CRITICAL_KINDS & counts.keys() else "warning"
        event_id = stored.event.event_id
        return [
            Finding(
                detector=self.name,
                subject=f"event:{event_id}",
                severity=severity,
                summary=f"response leaks {len(hits)} PII item(s): {'; '.join(parts)}",
                trigger_seq=stored.seq,
                window={"seq": stored.seq},
                statistics={"counts": dict(counts), "total": len(hits), "masked": masked},
                evidence=(event_id,),
            )
        ]

    def state(self) -> dict[str, Any]:
        return {"counts": dict(self._counts), "scanned": self._scanned, "flagged": self._flagged}

    def restore(self, state: Mapping[str, Any]) -> None:
        self._counts = Counter({str(k): int(v) for k, v in (state.get("counts") or {}).items()})
        self._scanned = int(state.get("scanned", 0))
        self._flagged = int(state.get("flagged", 0))
