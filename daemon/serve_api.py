"""The OpenAI chat-completions wire format the serve role speaks (docs/serve.md): requests read, answers shaped.

Pure functions, no I/O: :func:`parse_chat_request` turns a body into a :class:`ChatRequest` or raises
:class:`ApiError` (status, OpenAI error type, code, param and a message a person can act on); the ``*_json``
functions build the objects OpenAI's API returns (``chat.completion``, ``chat.completion.chunk``, ``model``,
``list``, ``{"error": ...}``), field for field as the official ``openai`` client parses them.

What is accepted: ``model``, ``messages`` (roles system, developer, user, assistant; content a string or a list of
text parts), ``max_tokens`` / ``max_completion_tokens``, ``temperature``, ``top_p``, ``seed``, ``stream``,
``stream_options.include_usage``, ``n`` = 1, ``user``, and parameters that change nothing here at their neutral
value (``frequency_penalty`` / ``presence_penalty`` 0, ``logprobs`` false, ``parallel_tool_calls``, ``store``,
``metadata``, ``service_tier``). Anything else (tools, images, ``stop``, ``n`` > 1, a field OpenAI does not
know) is a 400 that names it, rather than an answer that silently ignores what the caller asked for.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

#: Roles a message may have; ``developer`` is OpenAI's newer name for ``system`` (rendered as system).
ROLES = ("system", "developer", "user", "assistant")
#: Fields accepted and ignored at their neutral value (what the OpenAI SDKs may send by default).
_NEUTRAL = {
    "frequency_penalty": (0, 0.0, None),
    "presence_penalty": (0, 0.0, None),
    "logprobs": (False, None),
    "parallel_tool_calls": (True, False, None),
    "store": (False, None),
    "service_tier": ("auto", "default", None),
}
_IGNORED = ("metadata",)  # OpenAI's stored-completion tags: kept in the interaction's metadata
_KNOWN = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stream",
    "stream_options",
    "n",
    "user",
    *_NEUTRAL,
    *_IGNORED,
}
#: OpenAI parameters this server does not implement: refused by name.
_UNSUPPORTED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "response_format",
    "stop",
    "logit_bias",
    "top_logprobs",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
    "reasoning_effort",
)


class ApiError(Exception):
    """A request answered with an OpenAI-shaped error."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - OpenAI's field name
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param

    def to_json(self) -> dict[str, Any]:
        return error_json(self.message, self.type, self.code, self.param)


def error_json(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[dict[str, str], ...]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def _number(data: dict[str, Any], name: str, low: float, high: float, default: float) -> float:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(f"{name} must be a number, not {json.dumps(value)[:40]}", name)
    if not low <= value <= high:
        raise _bad(f"{name} must be between {low:g} and {high:g}, not {value}", name)
    return float(value)


def _content(value: Any, index: int) -> str:
    """A message's text: a string, or the ``text`` of a list of ``{"type": "text", "text": ...}`` parts."""
    where = f"messages[{index}].content"
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise _bad(f"{where}: only text parts are served (this model reads text), not {kind!r}", where)
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"{where} must be a string or a list of text parts", where)


def _messages(value: Any) -> tuple[dict[str, str], ...]:
    if not isinstance(value, list) or not value:
        raise _bad("messages must be a non-empty list of {role, content}", "messages")
    out = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise _bad(f"messages[{index}] must be an object with role and content", f"messages[{index}]")
        role = message.get("role")
        if role not in ROLES:
            raise _bad(
                f"messages[{index}].role must be one of {', '.join(ROLES)}, not {json.dumps(role)[:40]}"
                + (" (tools are not served)" if role in ("tool", "function") else ""),
                f"messages[{index}].role",
            )
        extra = sorted(set(message) - {"role", "content", "name"})
        if extra:
            raise _bad(f"messages[{index}]: {', '.join(extra)} not supported (tools are not served)", "messages")
        out.append(
            {"role": "system" if role == "developer" else role, "content": _content(message.get("content"), index)}
        )
    if not any(m["role"] == "user" for m in out):
        raise _bad("messages needs at least one user message", "messages")
    return tuple(out)


def parse_chat_request(body: bytes, *, default_max_tokens: int, max_tokens_limit: int) -> ChatRequest:
    """The request a ``POST /v1/chat/completions`` body holds.

    Raises:
        ApiError: 400, naming the parameter and the problem.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(f"the body is not valid JSON ({exc}); send a JSON object (Content-Type: application/json)") from None
    if not isinstance(data, dict):
        raise _bad("the body must be a JSON object with model and messages")
    unsupported = [name for name in _UNSUPPORTED if data.get(name) not in (None, [], {})]
    if unsupported:
        raise _bad(f"{', '.join(unsupported)}: not supported by alignd serve", unsupported[0], "unsupported_parameter")
    unknown = sorted(set(data) - _KNOWN - set(_UNSUPPORTED))
    if unknown:
        raise _bad(f"Unrecognized request argument supplied: {', '.join(unknown)}", unknown[0])
    for name, neutral in _NEUTRAL.items():
        if name in data and data[name] not in neutral:
            raise _bad(f"{name} is not supported by alignd serve (only {neutral[0]!r})", name, "unsupported_parameter")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model is required: the served model's id (GET /v1/models lists it)", "model")
    n = data.get("n")
    if n not in (None, 1):
        raise _bad("n must be 1: one answer per request is served", "n")
    asked = data.get("max_completion_tokens", data.get("max_tokens"))
    if asked is None:
        max_tokens = default_max_tokens
    elif isinstance(asked, bool) or not isinstance(asked, int) or asked < 1:
        raise _bad("max_tokens must be a positive integer", "max_tokens")
    elif asked > max_tokens_limit:
        raise _bad(f"max_tokens is {asked}, over this server's limit of {max_tokens_limit}", "max_tokens")
    else:
        max_tokens = asked
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad("seed must be an integer", "seed")
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream must be true or false", "stream")
    options = data.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise _bad("stream_options takes include_usage only", "stream_options")
    if options and not stream:
        raise _bad("stream_options is only allowed when stream is true", "stream_options")
    user = data.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > 256):
        raise _bad("user must be a string of at most 256 characters", "user")
    metadata = data.get("metadata")
    if metadata is not None and (
        not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values())
    ):
        raise _bad("metadata must be an object of strings", "metadata")
    return ChatRequest(
        model=model,
        messages=_messages(data.get("messages")),
        max_tokens=max_tokens,
        temperature=_number(data, "temperature", 0.0, 2.0, 1.0),
        top_p=_number(data, "top_p", 0.0, 1.0, 1.0),
        seed=seed,
        stream=bool(stream),
        include_usage=bool(options and options.get("include_usage")),
        user=user,
        metadata=dict(metadata or {}),
    )


# --- answers ---------------------------------------------------------------------------------------------------


def usage_json(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_json(
    completion_id: str,
    created: int,
    model: str,
    fingerprint: str,
    *,
    content: str | None,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    refusal: str | None = None,
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage_json(prompt_tokens, completion_tokens),
    }


def chunk_json(
    completion_id: str,
    created: int,
    model: str,
    fingerprint: str,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One ``chat.completion.chunk``; ``delta`` None: the usage chunk (no choices) that ends a stream."""
    chunk: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint,
        "choices": []
        if delta is None
        else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event as OpenAI sends them: ``data: <json>`` and a blank line."""
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def model_json(model_id: str, created: int, version: str) -> dict[str, Any]:
    """A ``model`` object; ``version``: the registry version served under the id (``base``: no champion)."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": "alignd", "version": version}
