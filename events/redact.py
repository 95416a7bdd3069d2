"""Masking secrets out of URLs and out of any text that is printed or logged (pure functions, no I/O).

This is the one place that decides what a secret looks like, so that ``alignd config show``, the CLI's error
messages, log lines and stored failure reasons all hide the same things. It sits in ``events`` (the lowest
layer) so that every package may import it.

- :func:`mask_url` hides the password of a URL's user-info (``u:***@h``, the user name is kept), the values of
  query parameters named like secrets (``?password=***``, ``?token=***``; also a parameter such as
  ``options=`` whose value holds one), and everything after the scheme when the URL is malformed (several
  ``@``, an unclosed bracket, a port that is not a number, control characters, a password that holds an
  unencoded ``/`` ``?`` or ``#``): ``postgresql://***``. What it cannot read, it does not show.
- :func:`url_secrets` lists the secret values a URL carries, so that they can be searched for in text that
  echoes them in another form (a driver's error message, a traceback).
- :func:`without_credentials` is a URL fit for a link in a page: no user-info, no secret parameters.
- :class:`Scrubber` masks, in free text, the known secret values (in their plain, percent-encoded and
  JSON-escaped forms), every URL, and ``password=...``-like pairs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, unquote, unquote_plus

MASK = "***"
# Known secrets shorter than this are not searched for in free text: a two-letter password would mask every
# occurrence of those letters (they are still masked in URLs and settings, where their place is known).
MIN_SECRET_CHARS = 4

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+._\-]*:")  # "_" too: Kafka's SASL_SSL://
# Whitespace and control characters have no place in a URL: such a value is masked whole.
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f]")
# Names of query parameters (and of key=value pairs in text) whose value is a secret, matched case-insensitively
# anywhere in the name once dashes are underscores: sslpassword, sasl_password, X-Amz-Security-Token, api-key...
_SECRET_NAME = (
    r"pass(?:word|wd|phrase)|^pass$|pwd|secret|(?:^|_)token(?:$|_)|token$|api_?key|^key$|_key$|credential|signature"
    r"|^sig$|auth|cookie"
)
_SECRET_NAME_RE = re.compile(_SECRET_NAME, re.IGNORECASE)
# The name of a secret in free text: a word holding one of these (not followed by a letter: max_tokens is not).
_KEY_WORDS = r"[\w.-]*(?:pass(?:word|wd|phrase)|pwd|secret|token|api[_-]?key|credential|signature)(?![a-z])[\w.-]*"
# A key=value pair inside a parameter's value (libpq ``options=-c password=x``, a nested conninfo).
_NESTED_SECRET = re.compile(rf"(?:^|[\s&,;'\"=-]){_KEY_WORDS}\s*[=:]", re.IGNORECASE)
# Hosts whose "port" is not a number by design: mlflow's databricks://SCOPE:PREFIX (a secret scope's name).
_NAMED_PORT_SCHEMES = {"databricks", "databricks-uc", "uc"}
_WEB_SCHEMES = {"http", "https"}

# In text: a URL (up to a space or a quote), and a secret-named key=value or "key": "value" pair.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+._\-]*://[^\s'\"<>`]*")
_PAIR_IN_TEXT = re.compile(
    rf"(?P<key>\b{_KEY_WORDS})(?P<eq>\s*=\s*)(?P<value>'[^']*'|\"[^\"]*\"|[^\s&,;'\")\]}}]+)", re.IGNORECASE
)
# Words one of which every name _KEY_WORDS matches holds (lower case).
_PAIR_HINTS = ("pass", "pwd", "secret", "token", "key", "credential", "signature")
_QUOTED_PAIR_IN_TEXT = re.compile(
    rf"(?P<key>(?P<q>\\?['\"]){_KEY_WORDS}(?P=q)\s*:\s*)(?P<value>(?P<q2>\\?['\"]).*?(?P=q2)|b'[^']*'|[^\s,}}]+)",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """Whether a parameter named ``name`` holds a secret (``password``, ``sslpassword``, ``X-Amz-Signature``...)."""
    return bool(_SECRET_NAME_RE.search(unquote_plus(name).strip().replace("-", "_")))


def mask_url(url: str) -> str:
    """``url`` with its secrets replaced by ``***``; a URL without secrets (or a file path) comes back unchanged.

    >>> mask_url("postgresql+psycopg://alignd:hunter2@db:5432/alignd?sslmode=require&password=x")
    'postgresql+psycopg://alignd:***@db:5432/alignd?sslmode=require&password=***'
    >>> mask_url("postgresql://u:p@w@db/alignd")
    'postgresql://***'
    """
    if not url:
        return url
    scheme_match = _SCHEME.match(url)
    if scheme_match is None or len(scheme_match.group()) == 2:  # no scheme, or a Windows drive letter (C:)
        return _mask_schemeless(url)
    scheme = scheme_match.group()[:-1]
    after = url[scheme_match.end() :]
    if not after.startswith("//"):  # an opaque URI (dbfs:/path), or user:password@host:port without a scheme
        if _BAD_CHARS.search(after):
            return f"{scheme}:{MASK}"
        if "@" in after:
            return _mask_schemeless(url)
        path, question, query = after.partition("?")
        return f"{scheme}:{path}{question}{_mask_query(query)}" if question else url
    rest = after[2:]
    masked = _mask_hierarchical(scheme.lower(), rest)
    return f"{scheme}://{MASK}" if masked is None else f"{scheme}://{masked}"


def _mask_hierarchical(scheme: str, rest: str) -> str | None:
    """The part after ``scheme://`` masked, or None when it is malformed (then all of it is hidden)."""
    if _BAD_CHARS.search(rest):
        return None
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found != -1:
            end = min(end, found)
    authority, tail = rest[:end], rest[end:]
    if authority.count("@") > 1:
        return None
    if "@" not in authority and "@" in tail and ":" in authority:
        # A password holding an unencoded '/', '?' or '#' ends the authority early for a URL parser, while
        # SQLAlchemy and libpq read on to the '@': the "host" here may be the start of a password. On the web
        # an '@' after the query starts is ordinary (?email=a@b), so only its path counts there.
        before_at = tail[: tail.index("@")]
        if scheme not in _WEB_SCHEMES or ("?" not in before_at and "#" not in before_at):
            return None
    userinfo, at, hostport = authority.rpartition("@")
    if not _hosts_ok(hostport, scheme):
        return None
    if at:
        user, colon, password = userinfo.partition(":")
        if colon and password:
            userinfo = f"{user}:{MASK}"
    path, question, query = tail.partition("?")
    if not question and scheme in _WEB_SCHEMES and "#" in path:
        path, hash_, fragment = path.partition("#")
        return f"{userinfo}{at}{hostport}{path}{hash_}{_mask_query(fragment)}"
    return f"{userinfo}{at}{hostport}{path}{question}{_mask_query(query) if question else ''}"


def _hosts_ok(hostport: str, scheme: str) -> bool:
    """Every ``host[:port]`` of a (libpq: comma-separated) host list is well formed."""
    for one in hostport.split(","):
        if one.startswith("["):
            close = one.find("]")
            if close == -1 or "[" in one[1:] or "]" in one[close + 1 :]:
                return False
            port_part = one[close + 1 :]
            if port_part and (not port_part.startswith(":") or not port_part[1:].isdigit()):
                return False
            continue
        if "[" in one or "]" in one:
            return False
        host, colon, port = one.partition(":")
        if colon and port and not port.isdigit() and scheme not in _NAMED_PORT_SCHEMES:
            return False
        if ":" in port:
            return False
    return True


def _mask_query(query: str) -> str:
    if not query:
        return query
    parts = query.split("&")
    out = []
    previous_secret = False
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq:
            # A bare word right after a secret is most likely the rest of a value holding an unencoded '&'.
            out.append(MASK if previous_secret and part else part)
            continue
        secret = is_secret_name(key) or _value_holds_secret(value)
        out.append(f"{key}={MASK}" if secret and value else part)
        previous_secret = secret
    return "&".join(out)


def _query_secret_values(query: str) -> list[str]:
    """The values :func:`_mask_query` hides, a value continued by bare words (an unencoded '&') whole."""
    values: list[str] = []
    current: str | None = None
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if not eq:
            if current is not None and part:
                current += "&" + part
            continue
        if current is not None:
            values.append(current)
        current = value if value and (is_secret_name(key) or _value_holds_secret(value)) else None
    if current is not None:
        values.append(current)
    return values


def _value_holds_secret(value: str) -> bool:
    if not value:
        return False
    decoded = unquote_plus(value)
    if _NESTED_SECRET.search(decoded):
        return True
    return "://" in decoded and mask_url(decoded) != decoded


def _mask_schemeless(value: str) -> str:
    """A value without a scheme: a file path is shown as is; ``user:password@host:port`` loses its password."""
    if _BAD_CHARS.search(value.strip()) and "@" in value:
        return MASK
    if value.startswith(("/", ".", "~", "\\")) or len(value) > 1 and value[1] == ":":
        return value
    if "@" not in value:
        return value
    userinfo, _, hostport = value.rpartition("@")
    if "@" in userinfo or "/" in userinfo:
        return f"{MASK}@{hostport}"
    user, colon, password = userinfo.partition(":")
    return f"{user}:{MASK}@{hostport}" if colon and password else value


def without_credentials(url: str) -> str | None:
    """``url`` with no user-info and no secret parameters, for a link handed to a browser (where ``***`` would
    break it); None when it is malformed (a link to it cannot be trusted to be what it seems)."""
    masked = mask_url(url)
    scheme_match = _SCHEME.match(url)
    if scheme_match is None or not url[scheme_match.end() :].startswith("//"):
        return None if MASK in masked and MASK not in url else masked
    prefix = url[: scheme_match.end() + 2]
    rest = masked[len(prefix) :]
    if rest == MASK:
        return None
    end = min((i for i in (rest.find(c) for c in "/?#") if i != -1), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    path, question, query = tail.partition("?")
    kept = "&".join(part for part in query.split("&") if not part.endswith(f"={MASK}") and part != MASK)
    return f"{prefix}{authority.rpartition('@')[2]}{path}{question if kept else ''}{kept}"


def mask_url_list(value: str, sep: str = ",") -> str:
    """Each item of a ``sep``-separated list of URLs or ``host:port`` addresses masked (Kafka bootstrap servers)."""
    return sep.join(mask_url(item) for item in value.split(sep))


def url_secrets(url: str | None) -> list[str]:
    """The secret values ``url`` carries, as written and decoded: its password, its secret parameters' values,
    and, for a malformed URL, what could be a password under any reading of it (all after the scheme)."""
    if not url or mask_url(url) == url:
        return []
    found: list[str] = []
    scheme_match = _SCHEME.match(url)
    masked = mask_url(url)
    if scheme_match is not None and url[scheme_match.end() :].startswith("//"):
        rest = url[scheme_match.end() + 2 :]
        malformed = masked == f"{url[: scheme_match.end()]}//{MASK}"
    else:
        rest = url
        malformed = masked == MASK or masked.startswith(f"{MASK}@") or masked.endswith(f":{MASK}")
    if malformed:
        # Every reading of it: the whole rest, and each stretch from the first ':' to an '@'.
        found.append(rest)
        colon = rest.find(":")
        if colon != -1:
            found.extend(rest[colon + 1 : at] for at in range(colon + 1, len(rest)) if rest[at] == "@")
        found.extend(part for part in rest.split("@")[:-1] if part)
    else:
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        userinfo, at, _ = authority.rpartition("@")
        if at and ":" in userinfo:
            found.append(userinfo.partition(":")[2])
    # Read as SQLAlchemy does (all after the '?' is the query, '#' included) and as the web does (a fragment).
    for query in [rest.partition("?")[2], *re.split(r"[?#]", rest)[1:]]:
        found.extend(_query_secret_values(query))
    out: list[str] = []
    for value in found:
        for form in (value, unquote(value), unquote_plus(value)):
            if form and form not in out:
                out.append(form)
    return out


class Scrubber:
    """Masks known secret values, URLs and ``password=...`` pairs in free text (messages, tracebacks).

    Built once with the secrets the process knows (the settings' passwords and tokens); :meth:`scrub` is cheap
    on text that holds none of them (one regular-expression search per kind).
    """

    def __init__(self, known_secrets: Iterable[str | None] = ()) -> None:
        forms: set[str] = set()
        for secret in known_secrets:
            if not secret or len(secret) < MIN_SECRET_CHARS:
                continue
            forms.update(
                {
                    secret,
                    quote(secret, safe=""),
                    quote_plus(secret, safe=""),
                    json.dumps(secret)[1:-1],
                    repr(secret)[1:-1],
                }
            )
            forms.update({json.dumps(form)[1:-1] for form in list(forms)})  # a JSON log line's escaping, once more
        ordered = sorted((f for f in forms if len(f) >= MIN_SECRET_CHARS), key=len, reverse=True)
        self._known = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def scrub(self, text: str) -> str:
        if not text:
            return text
        if self._known is not None:
            text = self._known.sub(MASK, text)
        if "://" in text:
            text = _URL_IN_TEXT.sub(lambda m: mask_url(m.group()), text)
        lowered = text.lower()
        if not any(word in lowered for word in _PAIR_HINTS):  # the common case, ten times cheaper than the search
            return text
        text = _PAIR_IN_TEXT.sub(_mask_pair, text)
        return _QUOTED_PAIR_IN_TEXT.sub(lambda m: m.group("key") + _requote(m.group("value")), text)


def _mask_pair(match: re.Match[str]) -> str:
    return match.group("key") + match.group("eq") + _requote(match.group("value"))


def _requote(value: str) -> str:
    if value.startswith("\\") and len(value) > 1:
        quote_char = value[:2]
        return f"{quote_char}{MASK}{quote_char}"
    if value[:1] in ("'", '"'):
        return f"{value[0]}{MASK}{value[0]}"
    if value.startswith("b'"):
        return f"b'{MASK}'"
    return MASK


def mask_secrets_in_text(text: str, known_secrets: Iterable[str | None] = ()) -> str:
    """``text`` with known secrets, URL credentials and ``password=...`` pairs masked (see :class:`Scrubber`)."""
    return Scrubber(known_secrets).scrub(text)
