"""What production serves: ``serving.adapter_loaded``, appended by the ``vllm-sync`` role (docs/vllm.md) and the
``serve`` role (docs/serve.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from events.messages.base import Description, EventRecord, version_words
from events.names import SERVING_ADAPTER_LOADED


@dataclass(frozen=True)
class AdapterLoaded(EventRecord):
    """A version's LoRA adapter loaded into a vLLM server under the name clients select it by.

    Attributes:
        served_name: the ``model`` clients send (``alignd-policy-champion``).
        url: the vLLM server, its credentials masked.
        lora_path: the adapter folder as the server read it.
        method: ``load_inplace`` (one call, the name never unserved) or ``unload_then_load`` (a server that
            predates ``load_inplace``: the name is unserved between the two calls); ``embedded``: the serve role
            switched its own model between two answers.
        trigger_event_id: the ``model.promoted`` / ``model.rolled_back`` that asked for it; None when the sidecar
            found the server behind the registry on its own (a start, a restarted server).
        lag_s: seconds from the trigger's ``occurred_at`` to the successful load; None without a trigger.
        duration_s: seconds the swap's calls to vLLM took.
    """

    event_type: ClassVar[str] = SERVING_ADAPTER_LOADED

    kind: str
    name: str
    version: str
    previous_version: str | None
    served_name: str
    url: str
    lora_path: str
    method: str
    trigger_event_id: str | None
    lag_s: float | None
    duration_s: float

    def to_payload(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "previous_version": self.previous_version,
            "served_name": self.served_name,
            "url": self.url,
            "lora_path": self.lora_path,
            "method": self.method,
            "trigger_event_id": self.trigger_event_id,
            "lag_s": self.lag_s,
            "duration_s": self.duration_s,
            "subject": f"model:{self.name}",
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Self:
        keys = ("kind", "name", "version", "served_name", "url", "lora_path", "method", "duration_s")
        return cls(
            **{key: payload[key] for key in keys},
            previous_version=payload.get("previous_version"),
            trigger_event_id=payload.get("trigger_event_id"),
            lag_s=payload.get("lag_s"),
        )

    @staticmethod
    def describe_payload(payload: Mapping[str, Any]) -> Description:
        subject, model = version_words(payload)
        trigger = payload.get("trigger_event_id")
        lag = payload.get("lag_s")
        why = f"after {trigger}" + (f" ({lag:.1f} s later)" if isinstance(lag, int | float) else "")
        if not trigger:
            why = "the server was behind the registry's champion"
        # method "embedded": alignd's own serve role switched its model (docs/serve.md), not a vLLM server.
        server = "alignd serve" if payload.get("method") == "embedded" else "vLLM"
        reason = f"served as {payload.get('served_name')} by {server} at {payload.get('url')} ({payload.get('method')}); {why}"
        return Description(subject, model, reason)
