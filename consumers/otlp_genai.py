"""An LLM span becomes an ``interaction.logged`` payload: the mapping rules (pure; the table is docs/otel.md).

Three families of instrumentation describe the same call with different attributes, and alignd reads them all:

- the OpenTelemetry GenAI semantic conventions (semantic-conventions ``docs/gen-ai/gen-ai-spans.md``): the
  ``gen_ai.*`` attributes; the content as ``gen_ai.input.messages`` / ``gen_ai.output.messages`` /
  ``gen_ai.system_instructions`` (v1.37 on, JSON strings or structured values), or in the span events
  ``gen_ai.{system,user,assistant,tool}.message`` and ``gen_ai.choice`` (v1.28 to v1.36, their body in a
  ``gen_ai.event.content`` attribute when they are span events, as Azure AI Inference writes them), or in the
  events ``gen_ai.content.prompt`` / ``gen_ai.content.completion`` (v1.26 and v1.27);
- OpenLLMetry (traceloop): ``llm.request.type`` and the flattened ``gen_ai.prompt.N.role|content`` and
  ``gen_ai.completion.N.role|content``, tokens as ``gen_ai.usage.prompt_tokens|completion_tokens`` in older
  versions;
- OpenInference (Arize, spec/semantic_conventions.md): ``openinference.span.kind = LLM``, the flattened
  ``llm.input_messages.N.message.role|content`` and ``llm.output_messages.N...``, ``llm.prompts`` /
  ``llm.choices`` for completion APIs, and ``input.value`` / ``output.value`` as the last resort.

Each side (what was sent, what came back) is read from the first shape that has it, in that order. A span that
is not an LLM call, or one whose content was not captured, is skipped with a reason (counted by the ingestor);
an LLM span whose attributes contradict its convention raises :class:`SpanMappingError` (a dead letter).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

#: Why a span was not turned into an interaction (the ``reason`` label of the skipped-spans counter).
NOT_LLM = "not_llm"
NO_CONTENT = "no_content"
FAILED_CALL = "failed_call"
TOOL_CALL_ONLY = "tool_call_only"
SKIP_REASONS = (NOT_LLM, NO_CONTENT, FAILED_CALL, TOOL_CALL_ONLY)

#: ``Status.StatusCode.STATUS_CODE_ERROR`` in opentelemetry/proto/trace/v1/trace.proto.
STATUS_ERROR = 2

#: ``gen_ai.operation.name`` values that are not a model generating text (gen-ai-spans.md, gen-ai-agent-spans.md):
#: the model calls inside an agent have spans of their own, so counting the agent's span too would store them twice.
NOT_GENERATION = frozenset({"embeddings", "execute_tool", "create_agent", "invoke_agent", "invoke_workflow"})
#: OpenLLMetry's ``llm.request.type`` values that are not generation.
OPENLLMETRY_NOT_GENERATION = frozenset({"embedding", "embeddings", "rerank"})

#: The events of GenAI conventions v1.28-v1.36 that carry one input message each, and its role. They are span
#: events (Azure AI Inference) or log records (the OpenTelemetry Python instrumentations, consumers/otlp_logs.py).
MESSAGE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
#: Any ``gen_ai.<role>.message``: opentelemetry-instrumentation-openai-v2 names the event after the message's role
#: (``f"gen_ai.{role}.message"``), so OpenAI's ``developer`` messages come as ``gen_ai.developer.message``.
_MESSAGE_EVENT = re.compile(r"gen_ai\.([a-z][a-z0-9_]*)\.message")
#: The event of one choice (the response), and v1.37's event with the whole exchange in its attributes.
CHOICE_EVENT = "gen_ai.choice"
DETAILS_EVENT = "gen_ai.client.inference.operation.details"


def message_event_role(name: str) -> str | None:
    """The role of an input-message event (``gen_ai.user.message`` -> ``user``), or None for another event."""
    found = _MESSAGE_EVENT.fullmatch(name)
    return found.group(1) if found else None


def is_content_event(name: str) -> bool:
    """Whether an event (a span event or a log record's event name) carries a GenAI call's prompt or response."""
    return name in (CHOICE_EVENT, DETAILS_EVENT) or message_event_role(name) is not None


class SpanMappingError(ValueError):
    """An LLM span whose attributes alignd cannot read; the message names the attribute and the problem."""


@dataclass(frozen=True)
class SpanEvent:
    name: str
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class SpanView:
    """One span of an OTLP message in plain Python: ids in lower-case hex, attributes as JSON-like values."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    events: Sequence[SpanEvent]
    status_code: int
    resource: Mapping[str, Any]
    scope: str

    def attribute(self, *keys: str) -> Any:
        """The first of ``keys`` the span has (then its resource has), or None."""
        for source in (self.attributes, self.resource):
            for key in keys:
                value = source.get(key)
                if value is not None:
                    return value
        return None


@dataclass(frozen=True)
class Input:
    messages: list[dict[str, str]] | None
    prompt: str | None
    shape: str


@dataclass(frozen=True)
class Output:
    text: str
    shape: str
    tool_calls: bool = False
    choices: int = 1
    finish_reasons: tuple[str, ...] = ()


def is_llm_call(attributes: Mapping[str, Any]) -> bool:
    """Whether a span is a call to a model that generates text (the rules in docs/otel.md, first match wins)."""
    kind = attributes.get("openinference.span.kind")
    if isinstance(kind, str):
        return kind.upper() == "LLM"
    operation = attributes.get("gen_ai.operation.name")
    if isinstance(operation, str):
        return operation not in NOT_GENERATION
    request_type = attributes.get("llm.request.type")
    if isinstance(request_type, str):
        return request_type not in OPENLLMETRY_NOT_GENERATION
    if "traceloop.span.kind" in attributes:  # OpenLLMetry's workflow, task, agent and tool spans
        return False
    return any(
        key in attributes
        for key in ("gen_ai.system", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.response.model")
    )


# --- reading values -----------------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value: Any) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _json(value: Any, where: str) -> Any:
    """An attribute that holds JSON: a string to parse, or a structured OTLP value (already Python data)."""
    if not isinstance(value, str):
        return value
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise SpanMappingError(f"{where}: not valid JSON ({exc.msg}; got {_shown(value)})") from None


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SpanMappingError(f"{where}: expected a string, got {_kind(value)} {_shown(value)}")
    return value


def _count(span: SpanView, *keys: str) -> int | None:
    """A token count: the first of ``keys`` the span has; a non-negative integer, or the span is malformed."""
    for key in keys:
        value = span.attributes.get(key)
        if value is None:
            continue
        if type(value) is not int or value < 0:
            raise SpanMappingError(f"{key}: expected a non-negative integer, got {_kind(value)} {_shown(value)}")
        return value
    return None


def _indexed(attributes: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Flattened lists (``prefix.0.role``, ``prefix.0.content``, ``prefix.1...``) as a list of dicts, by index."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.(.+)")
    items: dict[int, dict[str, Any]] = {}
    for key, value in attributes.items():
        if key.startswith(prefix):
            found = pattern.fullmatch(key)
            if found:
                items.setdefault(int(found.group(1)), {})[found.group(2)] = value
    return [items[index] for index in sorted(items)]


@dataclass
class _Parts:
    texts: list[str]
    dropped: int = 0
    tool_calls: bool = False


def _parts(parts: Any, where: str) -> _Parts:
    """The text of a GenAI message's parts (v1.37 JSON schema): text parts, and a tool's response as text."""
    if not isinstance(parts, list):
        raise SpanMappingError(f"{where}: expected a list of parts, got {_kind(parts)} {_shown(parts)}")
    found = _Parts([])
    for index, part in enumerate(parts):
        if not isinstance(part, dict):
            raise SpanMappingError(f"{where}.{index}: expected a part object, got {_kind(part)} {_shown(part)}")
        kind = part.get("type")
        if kind == "text":
            found.texts.append(_string(part.get("content"), f"{where}.{index}.content"))
        elif kind == "tool_call_response":
            response = part.get("response", part.get("result"))
            found.texts.append(response if isinstance(response, str) else orjson.dumps(response).decode())
        elif kind == "tool_call":
            found.tool_calls = True
        else:  # blobs, files, URIs, reasoning: not text alignd can train on
            found.dropped += 1
    return found


def _content_text(content: Any, where: str) -> str:
    """A message's content: a string, or a list of content parts (OpenAI's ``{"type": "text", "text": ...}``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text":
                texts.append(_string(part.get("text", part.get("content")), f"{where}.{index}.text"))
        return "\n".join(texts)
    if content is None:
        return ""
    raise SpanMappingError(f"{where}: expected a string or a list of parts, got {_kind(content)} {_shown(content)}")


def _role(value: Any, where: str) -> str:
    role = _string(value, where)
    if not role:
        raise SpanMappingError(f"{where}: empty role")
    return role


def check_event(event: SpanEvent) -> None:
    """Read one content event as a span holding it alone would be read, so that a malformed one is found while the
    message that brought it is at hand.

    Raises:
        SpanMappingError: the event's body contradicts its convention (named in the message).
    """
    alone = SpanView("", "", "", "", 0, 0, {}, (event,), 0, {}, "")
    read_input(alone)
    read_output(alone)


# --- what was sent ------------------------------------------------------------------------------------------


def _input_messages(span: SpanView) -> Input | None:
    """GenAI v1.37+: ``gen_ai.system_instructions`` then ``gen_ai.input.messages`` (on the span, or on its
    ``gen_ai.client.inference.operation.details`` event)."""
    sources = [span.attributes] + [
        e.attributes for e in span.events if e.name == "gen_ai.client.inference.operation.details"
    ]
    for attributes in sources:
        raw = attributes.get("gen_ai.input.messages")
        if raw is None:
            continue
        messages: list[dict[str, str]] = []
        instructions = attributes.get("gen_ai.system_instructions")
        if instructions is not None:
            text = _parts(_json(instructions, "gen_ai.system_instructions"), "gen_ai.system_instructions").texts
            messages.append({"role": "system", "content": "\n".join(text)})
        listed = _json(raw, "gen_ai.input.messages")
        if not isinstance(listed, list):
            raise SpanMappingError(f"gen_ai.input.messages: expected a list of messages, got {_kind(listed)}")
        for index, message in enumerate(listed):
            where = f"gen_ai.input.messages.{index}"
            if not isinstance(message, dict):
                raise SpanMappingError(f"{where}: expected a message object, got {_kind(message)} {_shown(message)}")
            role = _role(message.get("role"), f"{where}.role")
            if "parts" in message:
                content = "\n".join(_parts(message["parts"], f"{where}.parts").texts)
            else:  # {role, content}, as some instrumentations still write it
                content = _content_text(message.get("content"), f"{where}.content")
            messages.append({"role": role, "content": content})
        return Input(messages, None, "gen_ai.input.messages") if messages else None
    return None


def _openllmetry_prompts(span: SpanView) -> Input | None:
    items = _indexed(span.attributes, "gen_ai.prompt")
    if not items:
        return None
    messages = []
    for index, item in enumerate(items):
        if "content" not in item:
            continue
        role = _role(item.get("role", "user"), f"gen_ai.prompt.{index}.role")
        content = item["content"]
        if isinstance(content, str) and content.startswith("[{"):
            parsed = _json(content, f"gen_ai.prompt.{index}.content")  # a list of content parts, as JSON
            content = _content_text(parsed, f"gen_ai.prompt.{index}.content") if isinstance(parsed, list) else content
        messages.append({"role": role, "content": _content_text(content, f"gen_ai.prompt.{index}.content")})
    return Input(messages, None, "gen_ai.prompt.N") if messages else None


def _event_body(event: SpanEvent) -> dict[str, Any]:
    """A GenAI event's body when it is a span event: ``gen_ai.event.content`` (JSON) or the attributes themselves."""
    body = dict(event.attributes)
    content = body.pop("gen_ai.event.content", None)
    if content is not None:
        parsed = _json(content, f"{event.name}: gen_ai.event.content")
        if isinstance(parsed, dict):
            body.update(parsed)
        else:
            body["content"] = parsed
    return body


def _message_events(span: SpanView) -> Input | None:
    messages: list[dict[str, str]] = []
    for event in span.events:
        role = MESSAGE_EVENTS.get(event.name) or message_event_role(event.name)
        if role is None:
            continue
        body = _event_body(event)
        declared = body.get("role")
        role = declared if isinstance(declared, str) and declared else role
        messages.append({"role": role, "content": _content_text(body.get("content"), f"{event.name}.content")})
    return Input(messages, None, "gen_ai.*.message events") if messages else None


def _prompt_event(span: SpanView) -> Input | None:
    for event in span.events:
        if event.name == "gen_ai.content.prompt" and "gen_ai.prompt" in event.attributes:
            raw = event.attributes["gen_ai.prompt"]
            parsed = _json(raw, "gen_ai.content.prompt: gen_ai.prompt") if str(raw).startswith("[") else raw
            if isinstance(parsed, str):
                return Input(None, parsed, "gen_ai.content.prompt event")
            if not isinstance(parsed, list):
                raise SpanMappingError(f"gen_ai.content.prompt: gen_ai.prompt: expected a list, got {_kind(parsed)}")
            messages = []
            for index, message in enumerate(parsed):
                where = f"gen_ai.content.prompt: gen_ai.prompt.{index}"
                if not isinstance(message, dict):
                    raise SpanMappingError(f"{where}: expected a message object, got {_kind(message)}")
                role = _role(message.get("role", "user"), f"{where}.role")
                messages.append({"role": role, "content": _content_text(message.get("content"), f"{where}.content")})
            return Input(messages, None, "gen_ai.content.prompt event") if messages else None
    return None


def _openinference_messages(span: SpanView, prefix: str) -> list[dict[str, str]]:
    messages = []
    for index, item in enumerate(_indexed(span.attributes, prefix)):
        where = f"{prefix}.{index}.message"
        role = _role(item.get("message.role", "user"), f"{where}.role")
        if "message.content" in item:
            content = _content_text(item["message.content"], f"{where}.content")
        else:  # message.contents.N.message_content.type|text
            parts = _indexed(item, "message.contents")
            content = "\n".join(
                _string(p.get("message_content.text", ""), f"{where}.contents.{i}.message_content.text")
                for i, p in enumerate(parts)
                if p.get("message_content.type", "text") == "text"
            )
        messages.append({"role": role, "content": content})
    return messages


def _openinference_input(span: SpanView) -> Input | None:
    messages = _openinference_messages(span, "llm.input_messages")
    if messages:
        return Input(messages, None, "llm.input_messages")
    prompts = _indexed(span.attributes, "llm.prompts")
    if prompts:
        texts = [_string(p.get("prompt.text", ""), f"llm.prompts.{i}.prompt.text") for i, p in enumerate(prompts)]
        return Input(None, "\n".join(texts), "llm.prompts")
    value = span.attributes.get("input.value")
    if value is None:
        return None
    text = _string(value, "input.value")
    if span.attributes.get("input.mime_type") == "application/json":
        parsed = _json(text, "input.value")
        if isinstance(parsed, dict) and isinstance(parsed.get("messages"), list):
            messages = []
            for index, message in enumerate(parsed["messages"]):
                if isinstance(message, dict) and isinstance(message.get("role"), str) and message["role"]:
                    content = _content_text(message.get("content"), f"input.value.messages.{index}.content")
                    messages.append({"role": message["role"], "content": content})
            if messages:
                return Input(messages, None, "input.value (messages)")
        if isinstance(parsed, dict) and isinstance(parsed.get("prompt"), str):
            return Input(None, parsed["prompt"], "input.value (prompt)")
    return Input(None, text, "input.value")


_INPUT_SHAPES: tuple[Callable[[SpanView], Input | None], ...] = (
    _input_messages,
    _openllmetry_prompts,
    _message_events,
    _prompt_event,
    _openinference_input,
)


def read_input(span: SpanView) -> Input | None:
    """What was sent to the model, from the first shape that has it (docs/otel.md)."""
    for shape in _INPUT_SHAPES:
        found = shape(span)
        if found is not None:
            return found
    return None


# --- what came back -----------------------------------------------------------------------------------------


def _output_messages(span: SpanView) -> Output | None:
    sources = [span.attributes] + [
        e.attributes for e in span.events if e.name == "gen_ai.client.inference.operation.details"
    ]
    for attributes in sources:
        raw = attributes.get("gen_ai.output.messages")
        if raw is None:
            continue
        listed = _json(raw, "gen_ai.output.messages")
        if not isinstance(listed, list):
            raise SpanMappingError(f"gen_ai.output.messages: expected a list of messages, got {_kind(listed)}")
        if not listed:
            return None
        reasons = []
        first: _Parts | None = None
        for index, message in enumerate(listed):
            where = f"gen_ai.output.messages.{index}"
            if not isinstance(message, dict):
                raise SpanMappingError(f"{where}: expected a message object, got {_kind(message)} {_shown(message)}")
            if "parts" in message:
                parts = _parts(message["parts"], f"{where}.parts")
            else:
                parts = _Parts([_content_text(message.get("content"), f"{where}.content")])
            if isinstance(message.get("finish_reason"), str):
                reasons.append(message["finish_reason"])
            if first is None:
                first = parts
        assert first is not None  # the list is not empty
        text = "\n".join(first.texts)
        return Output(text, "gen_ai.output.messages", first.tool_calls, len(listed), tuple(reasons))
    return None


def _openllmetry_completions(span: SpanView) -> Output | None:
    items = [item for item in _indexed(span.attributes, "gen_ai.completion") if item]
    if not items:
        return None
    first = items[0]
    tool_calls = any(key.startswith("tool_calls.") or key.startswith("function_call") for key in first)
    text = _content_text(first.get("content"), "gen_ai.completion.0.content")
    reasons = tuple(item["finish_reason"] for item in items if isinstance(item.get("finish_reason"), str))
    return Output(text, "gen_ai.completion.N", tool_calls, len(items), reasons)


def _choice_events(span: SpanView) -> Output | None:
    choices = [_event_body(event) for event in span.events if event.name == "gen_ai.choice"]
    if not choices:
        return None
    choices.sort(key=lambda body: body["index"] if type(body.get("index")) is int else 0)
    first = choices[0]
    message = first.get("message")
    if isinstance(message, dict):
        text = _content_text(message.get("content"), "gen_ai.choice.message.content")
        tool_calls = bool(message.get("tool_calls"))
    else:
        text = _content_text(first.get("content"), "gen_ai.choice.content")
        tool_calls = bool(first.get("tool_calls"))
    reasons = tuple(c["finish_reason"] for c in choices if isinstance(c.get("finish_reason"), str))
    return Output(text, "gen_ai.choice events", tool_calls, len(choices), reasons)


def _completion_event(span: SpanView) -> Output | None:
    for event in span.events:
        if event.name == "gen_ai.content.completion" and "gen_ai.completion" in event.attributes:
            raw = event.attributes["gen_ai.completion"]
            parsed = _json(raw, "gen_ai.content.completion: gen_ai.completion") if str(raw).startswith("[") else raw
            if isinstance(parsed, list):
                if not parsed:
                    return None
                first = parsed[0]
                content = first.get("content") if isinstance(first, dict) else first
                text = _content_text(content, "gen_ai.content.completion: gen_ai.completion.0.content")
                return Output(text, "gen_ai.content.completion event", choices=len(parsed))
            return Output(_content_text(parsed, "gen_ai.completion"), "gen_ai.content.completion event")
    return None


def _openinference_output(span: SpanView) -> Output | None:
    messages = _openinference_messages(span, "llm.output_messages")
    if messages:
        tool_calls = any(
            ".message.tool_calls." in key for key in span.attributes if key.startswith("llm.output_messages.")
        )
        return Output(messages[0]["content"], "llm.output_messages", tool_calls, len(messages))
    choices = _indexed(span.attributes, "llm.choices")
    if choices:
        text = _string(choices[0].get("completion.text", ""), "llm.choices.0.completion.text")
        return Output(text, "llm.choices", choices=len(choices))
    value = span.attributes.get("output.value")
    if value is None:
        return None
    return Output(_string(value, "output.value"), "output.value")


_OUTPUT_SHAPES: tuple[Callable[[SpanView], Output | None], ...] = (
    _output_messages,
    _openllmetry_completions,
    _choice_events,
    _completion_event,
    _openinference_output,
)


def read_output(span: SpanView) -> Output | None:
    """What the model answered (its first choice), from the first shape that has it (docs/otel.md)."""
    for shape in _OUTPUT_SHAPES:
        found = shape(span)
        if found is not None:
            return found
    return None


# --- the payload --------------------------------------------------------------------------------------------


def request_id_of(span: SpanView) -> str:
    """``alignd.request_id`` when the application set it, else ``<trace id>:<span id>`` (what
    ``alignd.client.otel_request_id`` computes, so feedback can name the span)."""
    chosen = span.attributes.get("alignd.request_id")
    if chosen is not None:
        return _string(chosen, "alignd.request_id")
    return f"{span.trace_id}:{span.span_id}"


def _model(span: SpanView) -> dict[str, str]:
    requested = span.attribute("gen_ai.request.model", "llm.request.model_name", "llm.model_name")
    answered = span.attribute("gen_ai.response.model", "llm.response.model_name", "llm.model_name")
    provider = span.attribute("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
    name = span.attribute("alignd.model.name") or requested or answered or provider or "unknown"
    version = span.attribute("alignd.model.version") or answered or requested or "unknown"
    return {"name": _string(name, "model name"), "version": _string(version, "model version")}


def _metadata(span: SpanView, sent: Input, answer: Output) -> dict[str, Any]:
    otel: dict[str, Any] = {
        "trace_id": span.trace_id,
        "span_id": span.span_id,
        "span_name": span.name,
        "scope": span.scope,
        "input_shape": sent.shape,
        "output_shape": answer.shape,
    }
    if span.parent_span_id:
        otel["parent_span_id"] = span.parent_span_id
    if span.status_code == STATUS_ERROR:
        otel["status"] = "error"
    metadata: dict[str, Any] = {"otel": otel}
    provider = span.attribute("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
    if isinstance(provider, str):
        metadata["provider"] = provider
    operation = span.attributes.get("gen_ai.operation.name", span.attributes.get("llm.request.type"))
    if isinstance(operation, str):
        metadata["operation"] = operation
    usage = {
        "input_tokens": _count(
            span, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.token_count.prompt"
        ),
        "output_tokens": _count(
            span, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.token_count.completion"
        ),
        "total_tokens": _count(span, "llm.usage.total_tokens", "llm.token_count.total"),
    }
    if usage["total_tokens"] is None and usage["input_tokens"] is not None and usage["output_tokens"] is not None:
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
    usage = {key: value for key, value in usage.items() if value is not None}
    if usage:
        metadata["usage"] = usage
    reasons = span.attributes.get("gen_ai.response.finish_reasons")
    if isinstance(reasons, list) and all(isinstance(r, str) for r in reasons):
        metadata["finish_reasons"] = reasons
    elif answer.finish_reasons:
        metadata["finish_reasons"] = list(answer.finish_reasons)
    response_id = span.attributes.get("gen_ai.response.id")
    if isinstance(response_id, str):
        metadata["response_id"] = response_id
    if answer.choices > 1:
        metadata["choices"] = answer.choices
    request = {
        key.removeprefix("gen_ai.request."): value
        for key, value in span.attributes.items()
        if key.startswith("gen_ai.request.") and key != "gen_ai.request.model"
    }
    if request:
        metadata["request"] = request
    return metadata


@dataclass(frozen=True)
class SpanOutcome:
    """An interaction payload, or why the span was skipped (one of :data:`SKIP_REASONS`)."""

    payload: dict[str, Any] | None = None
    skipped: str | None = None


def map_span(span: SpanView) -> SpanOutcome:
    """The ``interaction.logged`` payload of one span, or the reason it is skipped.

    Raises:
        SpanMappingError: an LLM span whose attributes cannot be read (named in the message).
    """
    if not is_llm_call(span.attributes):
        return SpanOutcome(skipped=NOT_LLM)
    sent, answer = read_input(span), read_output(span)
    if answer is None or (not answer.text and not answer.tool_calls):
        return SpanOutcome(skipped=FAILED_CALL if span.status_code == STATUS_ERROR else NO_CONTENT)
    if not answer.text:
        return SpanOutcome(skipped=TOOL_CALL_ONLY)
    if sent is None:
        return SpanOutcome(skipped=NO_CONTENT)
    payload: dict[str, Any] = {"request_id": request_id_of(span), "model": _model(span)}
    if sent.messages is not None:
        payload["messages"] = sent.messages
    else:
        payload["prompt"] = sent.prompt
    payload["response"] = answer.text
    if span.end_ns >= span.start_ns > 0:
        payload["latency_ms"] = round((span.end_ns - span.start_ns) / 1e6, 3)
    user = span.attribute("user.id", "enduser.id", "traceloop.association.properties.user_id")
    if user is not None:
        payload["user"] = _string(user, "user.id")
    session = span.attribute("gen_ai.conversation.id", "session.id", "traceloop.association.properties.session_id")
    if session is not None:
        payload["session_id"] = _string(session, "session id (gen_ai.conversation.id / session.id)")
    payload["metadata"] = _metadata(span, sent, answer)
    return SpanOutcome(payload=payload)
