"""Jailbreak text without a model: undo the obfuscations a pattern or an embedding should see through.

:func:`normalise` turns a prompt into the text a pattern should see: NFKC (full-width and mathematical
letters to ASCII), invisible characters removed (zero-width, bidi controls, variation selectors; Unicode
tag characters, which smuggle ASCII, decoded), Cyrillic/Greek/IPA homoglyphs mapped to Latin inside words that
look Latin, leetspeak undone inside mixed letter/digit words, and base64/hex runs decoded when they decode to
text. The pattern families are in :mod:`jailbreak_patterns`, their search and scoring in :mod:`pattern_search`.
Everything here is pure and deterministic.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
from dataclasses import dataclass

MAX_CHARS = 50_000  # longer prompts are analysed on their first MAX_CHARS characters
_MAX_RUN = 20_000  # longest base64/hex run decoded

# Homoglyphs that NFKC leaves alone (Unicode TR39 confusables, the Latin-looking subset).
_CONFUSABLES = str.maketrans(
    {
        # Cyrillic
        "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
        "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "һ": "h", "ԛ": "q",
        "ԝ": "w", "ɡ": "g", "ӏ": "l", "ь": "b", "п": "n",
        "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T",
        "Х": "X", "У": "Y", "І": "I", "Ј": "J", "Ѕ": "S", "Ԁ": "D", "Һ": "H", "Ԛ": "Q", "Ԝ": "W",
        # Greek
        "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u",
        "χ": "x", "γ": "y", "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M",
        "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
        # Latin/IPA lookalikes
        "ı": "i", "ɑ": "a", "ɩ": "i", "ȷ": "j", "ʏ": "y", "ɢ": "G", "ʜ": "H", "ɪ": "I", "ʟ": "L", "ɴ": "N",
        "ʀ": "R", "ᴀ": "A", "ᴄ": "C", "ᴅ": "D", "ᴇ": "E", "ᴋ": "K", "ᴍ": "M", "ᴏ": "O", "ᴘ": "P", "ᴛ": "T",
        "ᴜ": "U", "ᴠ": "V", "ᴡ": "W", "ᴢ": "Z", "ꜱ": "S", "ſ": "s",
    }
)  # fmt: skip
_CONFUSABLE_CHARS = frozenset(chr(c) for c in _CONFUSABLES)
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g",
                       "@": "a", "$": "s", "!": "i", "|": "l", "+": "t", "€": "e"})  # fmt: skip
_LEET_TRIGGERS = frozenset("0134578@$9")
# tokens that mix letters and digits without being leetspeak: gpt4, 3rd, x86, sha256, 100k, hex digests
_NOT_LEET = re.compile(r"[a-zA-Z]+[-_]?\d+[a-zA-Z]?|\d+[a-zA-Z]{1,3}|[0-9a-fA-F]{6,}|\w*_\w*", re.ASCII)
_WORD = re.compile(r"[^\s.,;:?\"'()\[\]{}<>]+")
_LEET_WORD = re.compile(r"(?<![\w@$|+€!])(?=[\w@$!|+€]*[a-zA-Z])(?=[\w@$!|+€]*[0134578@$|+€9])[\w@$!|+€]{3,}")
_REGIONAL = re.compile("[\U0001f1e6-\U0001f1ff]")  # 🇭🇴🇼 spells HOW
_B64_RUN = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
_HEX_RUN = re.compile(r"(?:(?:\\x|0x)?[0-9a-fA-F]{2}[\s,:]?){8,}")


@dataclass(frozen=True)
class Normalised:
    """The normalised prompt, its other readings (leetspeak undone, decoded payloads) and what was undone."""

    text: str
    variants: tuple[str, ...]
    obfuscations: tuple[str, ...]

    @property
    def all_text(self) -> str:
        return "\n".join((self.text, *self.variants))

    @property
    def embed_text(self) -> str:
        """What an embedding should read: the de-obfuscated readings first (a model reads only the start)."""
        return "\n".join((*self.variants, self.text))


def _invisible(ch: str) -> bool:
    cp = ord(ch)
    if 0xFE00 <= cp <= 0xFE0F or 0xE0100 <= cp <= 0xE01EF:  # variation selectors
        return True
    return unicodedata.category(ch) == "Cf" or cp in (0x115F, 0x1160, 0x3164, 0xFFA0, 0x034F)


_INVISIBLE_MEMO: dict[str, bool] = {}  # non-ASCII character -> whether it is removed (tag characters included)
_TAG_CHARS = re.compile("[\U000e0020-\U000e007e]")


def _removed(ch: str) -> bool:
    hit = _INVISIBLE_MEMO.get(ch)
    if hit is None:
        hit = 0xE0020 <= ord(ch) <= 0xE007E or _invisible(ch)
        if len(_INVISIBLE_MEMO) < 65_536:
            _INVISIBLE_MEMO[ch] = hit
    return hit


_ASCII_BYTES = bytes(range(128))


def non_ascii(text: str) -> set[str]:
    # dropping the ASCII bytes of UTF-8 leaves whole characters; cheaper than set(text) or a regex scan
    return set(text.encode("utf-8", "surrogatepass").translate(None, _ASCII_BYTES).decode("utf-8", "surrogatepass"))


def utf8(text: str) -> bytes:
    # bytes.translate is a table lookup per byte; str.translate goes through a dict outside ASCII
    return text.encode("ascii") if text.isascii() else text.encode("utf-8", "surrogatepass")


# The non-ASCII characters that re's IGNORECASE matches to an ASCII letter (found by trying every code point against
# [a-z] under IGNORECASE on CPython 3.11); any other character matches an ASCII letter only if str.lower gives it.
_IGNORECASE_FOLD = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})
_FOLD_CHARS = frozenset("\u0130\u0131\u017f\u212a")


def fold(text: str) -> str:
    """Lowercase ``text`` so that a case-insensitive match of an ASCII literal implies the lowercase literal at the
    same place (str.lower lengthens only U+0130, which the table maps first)."""
    if text.isascii() or _FOLD_CHARS.isdisjoint(non_ascii(text)):
        return text.lower()
    return text.translate(_IGNORECASE_FOLD).lower()


def _strip_invisible(text: str) -> tuple[str, str, bool]:
    """(visible text, ASCII smuggled in tag characters, whether anything was removed)."""
    if text.isascii():  # no ASCII character is invisible (category Cf) or a tag
        return text, "", False
    drop = {ord(ch): None for ch in non_ascii(text) if _removed(ch)}
    if not drop:
        return text, "", False
    tags = "".join(chr(ord(ch) - 0xE0000) for ch in _TAG_CHARS.findall(text))
    return text.translate(drop), tags, True


def _map_confusables(text: str) -> tuple[str, bool]:
    """Map homoglyphs to Latin in words that mix them with Latin letters, and in words made only of them when
    the text is mostly Latin (so Russian or Greek prose is left alone)."""
    if text.isascii() or _CONFUSABLE_CHARS.isdisjoint(non_ascii(text)):  # no word can change
        return text, False
    changed = False
    latin: list[bool] = []

    def latin_text() -> bool:
        if not latin:
            letters = [c for c in text if c.isalpha()]
            latin.append(sum(c.isascii() for c in letters) > 0.6 * len(letters) if letters else False)
        return latin[0]

    def fix(m: re.Match[str]) -> str:
        nonlocal changed
        word = m.group(0)
        if word.isascii():
            return word
        odd = [c for c in word if not c.isascii() and c.isalpha()]
        if not odd or not all(c in _CONFUSABLE_CHARS for c in odd):
            return word
        if not any(c.isascii() and c.isalpha() for c in word) and not latin_text():
            return word
        changed = True
        return word.translate(_CONFUSABLES)

    return _WORD.sub(fix, text), changed


def _undo_leet(text: str) -> tuple[str | None, int]:
    """(text with leetspeak words spelled out, or None if there were none; how many words changed)."""
    count = 0

    def fix(m: re.Match[str]) -> str:
        nonlocal count
        word = m.group(0)
        core = word.strip("!|+")
        if len(core) < 3 or not any(c in _LEET_TRIGGERS for c in core) or _NOT_LEET.fullmatch(core):
            return word
        count += 1
        return word.translate(_LEET).lower()

    out = _LEET_WORD.sub(fix, text)
    return (out if count else None), count


def _texty(raw: bytes) -> str | None:
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(s) < 6:
        return None
    printable = sum(c.isprintable() or c in "\n\r\t" for c in s)
    letters = sum(c.isalpha() or c == " " for c in s)
    return s if printable / len(s) >= 0.95 and letters / len(s) >= 0.6 and " " in s.strip() else None


# ASCII characters that can be part of a hex run / a base64 run, as "a" (others " "): a run needs 16 of them in a row
# In UTF-8 every byte of a non-ASCII character is >= 0x80: those count as part of a hex run (\s takes some non-ASCII
# spaces) and never as part of a base64 run.
_HEX_CLASS = bytes(97 if c >= 128 or re.fullmatch(r"[\s,:\\x0-9a-fA-F]", chr(c)) else 32 for c in range(256))
_B64_CLASS = bytes(97 if c < 128 and re.fullmatch(r"[A-Za-z0-9+/_-]", chr(c)) else 32 for c in range(256))
_RUN16 = b"a" * 16
_LEET_CHARS = b"0134578@$9"  # a leetspeak word holds one of these (_LEET_TRIGGERS)


def _decode_runs(text: str, raw: bytes | None = None) -> list[tuple[str, str]]:
    """Decoded (kind, text) of the base64 and hex runs in ``text`` (``raw``: its utf8) that decode to readable
    text."""
    found: list[tuple[str, str]] = []
    if len(text) < 16:
        return found
    raw = utf8(text) if raw is None else raw
    # a run has 16 characters of the class in a row; bytes.find, as `in` on bytes first tries the needle as an int
    # and raises (then clears) a TypeError, which costs more than the search
    hex_possible = raw.translate(_HEX_CLASS).find(_RUN16) >= 0
    b64_possible = raw.translate(_B64_CLASS).find(_RUN16) >= 0
    for m in _HEX_RUN.finditer(text) if hex_possible else ():
        digits = re.sub(r"\\x|0x|[\s,:]", "", m.group(0))[:_MAX_RUN]
        if len(digits) % 2 == 0 and not digits.isdigit():
            decoded = _texty(binascii.unhexlify(digits)) if len(digits) >= 16 else None
            if decoded:
                found.append(("hex", decoded))
    for m in _B64_RUN.finditer(text) if b64_possible else ():
        run = m.group(0)[:_MAX_RUN]
        if run.isalpha() or re.fullmatch(r"[0-9a-fA-F]+", run):  # a long word or a hex digest, not base64
            continue
        run = run.rstrip("=")
        try:
            raw = base64.b64decode(run + "=" * (-len(run) % 4), altchars=b"-_" if ("-" in run or "_" in run) else None)
        except (binascii.Error, ValueError):
            continue
        decoded = _texty(raw)
        if decoded:
            found.append(("base64", decoded))
    return found


def normalise(text: str, *, depth: int = 2) -> Normalised:
    """Undo the usual obfuscations of ``text``; see the module doc. Decoded payloads are normalised in turn
    (``depth`` levels, so base64 of leetspeak or of base64 is read too)."""
    text = text[:MAX_CHARS]
    obfuscations: list[str] = []
    if text.isascii():  # NFKC, invisible characters, regional indicators and homoglyphs are all non-ASCII
        clean = _SPACES.sub(" ", text) if ("  " in text or "\t" in text) else text
        smuggled = ""
    else:
        nfkc = unicodedata.normalize("NFKC", text)
        if nfkc != text:
            if any(unicodedata.category(c) in ("Lu", "Ll", "Nd") and unicodedata.normalize("NFKC", c).isascii()
                   for c in non_ascii(text)):  # fmt: skip
                obfuscations.append("compatibility_forms")
        visible, smuggled, removed = _strip_invisible(nfkc)
        if not visible.isascii() and _REGIONAL.search(visible):
            visible = _REGIONAL.sub(lambda m: chr(ord(m.group(0)) - 0x1F1E6 + ord("A")), visible)
            obfuscations.append("regional_indicators")
        if removed:
            obfuscations.append("invisible_characters")
        if smuggled:
            obfuscations.append("tag_smuggling")
        mapped, changed = _map_confusables(visible)
        if changed:
            obfuscations.append("confusables")
        clean = _SPACES.sub(" ", mapped) if ("  " in mapped or "\t" in mapped) else mapped
    variants: list[str] = [smuggled] if smuggled else []
    raw = utf8(clean)
    if len(raw.translate(None, _LEET_CHARS)) < len(raw):
        leet, leet_words = _undo_leet(clean)
        if leet is not None:
            variants.append(leet)
            if leet_words >= 2:
                obfuscations.append("leetspeak")
    if depth > 0:
        for kind, decoded in _decode_runs(clean, raw):
            inner = normalise(decoded, depth=depth - 1)
            variants.append(inner.text)
            variants.extend(inner.variants)
            obfuscations.append(kind)
            obfuscations.extend(o for o in inner.obfuscations if o not in obfuscations)
    if _mentions_rot13(clean):
        variants.append(codecs.encode(clean, "rot13"))
    return Normalised(clean, tuple(variants), tuple(dict.fromkeys(obfuscations)))


_SPACES = re.compile(r"[ \t]+")
_ROT13 = re.compile(r"\brot[- ]?13\b|\bcaesar\b", re.IGNORECASE)


def _mentions_rot13(text: str) -> bool:
    low = fold(text)  # a case-insensitive match implies the folded literal
    if "rot" not in low and "caesar" not in low:
        return False
    return _ROT13.search(text) is not None
