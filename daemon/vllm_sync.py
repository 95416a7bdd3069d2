"""``alignd run --role vllm-sync``: keeps a vLLM server's LoRA adapter on the registry's champion (docs/vllm.md).

vLLM loads LoRA adapters at run time when started with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``:
``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path", "load_inplace"}`` and ``POST /v1/unload_lora_adapter``
``{"lora_name"}``; ``GET /v1/models`` lists the loaded adapters (``id`` the name, ``root`` the path), and a client
selects one by sending its name as ``model``. This sidecar follows the models topic with its own consumer group;
on a move of the champion alias of ``vllm.kind`` it downloads the champion's adapter into ``vllm.adapter_dir`` (a
folder the server reads: a shared volume) and loads it under one stable name, ``vllm.served_name``:

* ``load_inplace: true`` replaces the adapter behind the name in one call (the server keeps the name's id), so
  the name is never unserved: requests admitted before the call finish on the old weights, those after it get
  the new ones;
* a server that predates ``load_inplace`` ignores the field and answers 400 "has already been loaded": the
  sidecar then unloads the name and loads it again, and for the time between the two calls (milliseconds plus
  the load) a request naming it gets vLLM's 404 "model does not exist".

The registry is the truth and an event is a wake-up: the champion is read from MLflow when an event arrives, so a
backlog of moves (a sidecar that was down) loads the current champion once instead of replaying each version.
On start, and every ``vllm.check_interval_s`` while idle, it compares ``GET /v1/models`` with the champion and
loads the champion when the server lacks it (a sidecar started late, a vLLM server that restarted and lost its
runtime adapters).

Failures: vLLM unreachable, 5xx without vLLM's error body, 401 (wrong ``vllm.api_key``), the routes absent (runtime
updating off), MLflow or the store unreachable are retried with a doubling backoff, the event's offset left
uncommitted; a version without an adapter (no artifacts, no ``adapter_config.json``) or an adapter vLLM refuses
(its 400/404/500 error body) is settled: an error line with the version and event id, the offset committed, the
next event applied. Each applied swap appends ``serving.adapter_loaded`` (events.messages.serving) with the
version, the served name, the server, the method, how long the calls took and the lag from the event's
``occurred_at``.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from events.codec import parse_timestamp
from events.errors import ConfigurationError, StoreUnavailableError
from events.messages.serving import AdapterLoaded
from events.names import ALIAS_CHANGE_TYPES, MODEL_NAMES
from events.redact import mask_url
from trainers.registry import RegistryError, RegistryUnavailableError

if TYPE_CHECKING:
    from kafka import KafkaConsumer

    from daemon.bootstrap import App
    from daemon.settings import VllmSettings
    from events.sql_store import SqlEventStore
    from trainers.registry import ModelRegistry

logger = logging.getLogger(__name__)

SOURCE = "alignd.vllm-sync"
#: kafka-python's default: the broker drops a consumer that has not polled for this long from its group.
MAX_POLL_INTERVAL_MS = 300_000
#: How often the consumer polls (paused) while a swap waits to be retried: well inside MAX_POLL_INTERVAL_MS.
KEEPALIVE_S = 1.0
LOAD = "/v1/load_lora_adapter"
UNLOAD = "/v1/unload_lora_adapter"
MODELS = "/v1/models"


class VllmError(Exception):
    """A call to vLLM failed."""


class VllmUnavailableError(VllmError):
    """vLLM could not do it now (down, overloaded, misconfigured: routes absent, key refused); retried."""


class AdapterRefusedError(VllmError):
    """vLLM answered with its error body: this adapter cannot be loaded there (retrying would not help)."""


class AlreadyLoadedError(VllmError):
    """400 "has already been loaded": a server that ignores ``load_inplace``."""


class NoAdapterError(Exception):
    """The version has no LoRA adapter to serve (no artifacts, or none with ``adapter_config.json``)."""


def _error_of(response: requests.Response) -> tuple[str | None, str]:
    """(vLLM's error type, message) of an error response; type None when the body is not vLLM's ErrorResponse."""
    try:
        body = response.json()
    except ValueError:
        return None, response.text[:200]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # {"error": {"message", "type", "param", "code"}}
        return str(error.get("type")), str(error.get("message"))
    if isinstance(body, dict) and body.get("object") == "error":  # the flat shape of older vLLM releases
        return str(body.get("type")), str(body.get("message"))
    if isinstance(body, dict) and "detail" in body:  # FastAPI's own answer: no such route, or a body it refused
        return None, str(body["detail"])
    return None, str(error if error is not None else body)[:200]


class VllmClient:
    """vLLM's runtime LoRA endpoints, as its OpenAI-compatible server exposes them (docs/vllm.md lists the source)."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.shown = mask_url(self.url)
        self.timeout_s = timeout_s
        self.session = requests.Session()
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def _call(self, method: str, route: str, body: dict[str, Any] | None = None) -> requests.Response:
        try:
            response = self.session.request(method, self.url + route, json=body, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise VllmUnavailableError(f"vLLM at {self.shown} did not answer {method} {route}: {exc}") from None
        if response.status_code == 401:
            raise VllmUnavailableError(
                f"vLLM at {self.shown} refused the key (401 on {route}): set vllm.api_key to its --api-key"
            )
        if response.status_code == 404 and _error_of(response)[0] is None:
            raise VllmUnavailableError(
                f"vLLM at {self.shown} has no {route} (404): start it with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True "
                "and --enable-lora"
            )
        if response.status_code >= 500 and _error_of(response)[0] is None:
            raise VllmUnavailableError(f"vLLM at {self.shown} failed {route} ({response.status_code})")
        return response

    def served(self) -> dict[str, str | None]:
        """Every model the server serves, base and adapters: name -> root (an adapter's path)."""
        response = self._call("GET", MODELS)
        if response.status_code != 200:
            raise VllmUnavailableError(f"vLLM at {self.shown} answered {response.status_code} to GET {MODELS}")
        try:
            cards = response.json()["data"]
            return {str(card["id"]): card.get("root") for card in cards}
        except (ValueError, KeyError, TypeError) as exc:
            raise VllmUnavailableError(f"vLLM at {self.shown} listed its models in an unknown shape: {exc}") from None

    def load(self, name: str, path: str, *, inplace: bool) -> None:
        body: dict[str, Any] = {"lora_name": name, "lora_path": path}
        if inplace:
            body["load_inplace"] = True
        response = self._call("POST", LOAD, body)
        if response.status_code == 200:
            return
        kind, message = _error_of(response)
        if response.status_code == 400 and "already been loaded" in message:
            raise AlreadyLoadedError(message)
        raise AdapterRefusedError(
            f"vLLM at {self.shown} refused {path} as {name} ({response.status_code} {kind}): {message}"
        )

    def unload(self, name: str) -> bool:
        """Unload ``name``; False when the server did not have it (404 NotFoundError; 400 in older servers)."""
        response = self._call("POST", UNLOAD, {"lora_name": name})
        if response.status_code == 200:
            return True
        kind, message = _error_of(response)
        if response.status_code in (400, 404) and "cannot be found" in message:
            return False
        raise AdapterRefusedError(
            f"vLLM at {self.shown} refused to unload {name} ({response.status_code} {kind}): {message}"
        )


@dataclass(frozen=True)
class Trigger:
    """The event that asked for a swap: its id and when it happened (None: the sidecar's own check)."""

    event_id: str | None = None
    occurred_at: datetime | None = None
    version: str | None = None


class VllmSync:
    """One swap at a time: the champion's adapter, downloaded once, loaded under the served name."""

    def __init__(
        self,
        settings: VllmSettings,
        registry: ModelRegistry,
        store: SqlEventStore,
        client: VllmClient,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings, self.registry, self.store, self.client, self.clock = settings, registry, store, client, clock
        self.kind = settings.kind
        self.model = MODEL_NAMES[settings.kind]
        self.adapter_dir = Path(settings.adapter_dir)
        self.server_dir = settings.server_adapter_dir or settings.adapter_dir
        self.applied: str | None = None  # the version this process last saw served
        self.impossible: set[str] = set()  # versions settled as unservable (logged once)
        self._said_no_champion = False
        self._unrecorded: list[AdapterLoaded] = []  # swaps done whose event the store has not taken yet

    # --- the adapter on disk -------------------------------------------------------------------------------

    def folder(self, version: str) -> Path:
        return self.adapter_dir / f"{self.model}-v{version}"

    def server_path(self, version: str) -> str:
        return f"{self.server_dir.rstrip('/')}/{self.model}-v{version}"

    def prepare(self, version: str) -> Path:
        """The version's adapter under ``adapter_dir``, downloaded once: into a temporary folder, then renamed, so
        the server never reads half a folder.

        Raises:
            NoAdapterError: no artifacts, or none holding ``adapter_config.json``.
            RegistryUnavailableError: MLflow could not be reached.
        """
        final = self.folder(version)
        if (final / "adapter_config.json").is_file():
            return final
        self.adapter_dir.mkdir(parents=True, exist_ok=True)
        partial = self.adapter_dir / f".partial-{self.model}-v{version}-{uuid.uuid4().hex[:8]}"
        try:
            try:
                local = self.registry.download(self.kind, version, partial)
            except RegistryUnavailableError:
                raise
            except RegistryError as exc:
                raise NoAdapterError(f"{self.model} version {version} has no artifacts to serve: {exc}") from None
            # A policy's artifacts hold the PEFT adapter in adapter/ (trainers/policy.py); a bare adapter works too.
            found = next((d for d in (local / "adapter", local) if (d / "adapter_config.json").is_file()), None)
            if found is None:
                raise NoAdapterError(
                    f"{self.model} version {version} has no LoRA adapter (no adapter_config.json in its artifacts)"
                )
            if final.exists():
                shutil.rmtree(final)
            found.rename(final)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return final

    def prune(self, served: str) -> list[Path]:
        """Delete the downloaded versions past the newest ``keep_adapters`` (the served one always kept), so a
        sidecar that follows months of promotions does not fill the shared volume. vLLM reads an adapter's files
        when it loads them, so an older folder is not in use once another is loaded in place of it."""
        folders = [f for f in self.adapter_dir.glob(f"{self.model}-v*") if f.is_dir() and f != self.folder(served)]
        folders.sort(key=lambda f: f.stat().st_mtime, reverse=True)
        removed = folders[max(self.settings.keep_adapters - 1, 0) :]
        for folder in removed:
            shutil.rmtree(folder, ignore_errors=True)
        if removed:
            logger.info("removed %d older adapter folder(s) from %s", len(removed), self.adapter_dir)
        return removed

    # --- the swap -------------------------------------------------------------------------------------------

    def record_pending(self) -> None:
        """Append the swaps whose ``serving.adapter_loaded`` the store did not take (it was down)."""
        while self._unrecorded:
            record = self._unrecorded[0]
            when = self.clock()
            event_id = f"serving.adapter_loaded:{record.served_name}:{record.version}:{record.trigger_event_id or when.isoformat()}"
            self.store.append([record.to_event(event_id, when, SOURCE)])
            self._unrecorded.pop(0)

    def converge(self, trigger: Trigger | None = None) -> str | None:
        """Make the server serve the registry's champion under the served name; returns the version loaded now, or
        None when nothing had to be (or could be) loaded.

        Raises:
            VllmUnavailableError, RegistryUnavailableError, StoreUnavailableError: try again later.
            NoAdapterError, AdapterRefusedError: this version cannot be served (settled by the caller).
        """
        self.record_pending()
        trigger = trigger or Trigger()
        about = f"event {trigger.event_id}" if trigger.event_id else "check"
        champion = self.registry.get_by_alias(self.kind, "champion")
        if champion is None:
            if not self._said_no_champion:  # once, not at every check
                logger.warning("%s: %s has no champion; vLLM keeps serving what it serves", about, self.model)
            self._said_no_champion = True
            return None
        self._said_no_champion = False
        version = champion.version
        if trigger.version is not None and str(trigger.version) != version:
            logger.info("%s moved the champion to v%s; it is v%s now, which is served", about, trigger.version, version)
        if version in self.impossible:
            return None
        path = self.server_path(version)
        served = self.client.served()
        name = self.settings.served_name
        if name in served and (served[name] == path or (served[name] is None and self.applied == version)):
            if self.applied != version:
                logger.info(
                    "%s: vLLM at %s already serves %s v%s as %s", about, self.client.shown, self.model, version, name
                )
            self.applied = version
            return None
        previous = self._version_of(served.get(name)) if name in served else None
        try:
            self.prepare(version)
            started = time.monotonic()
            try:
                self.client.load(name, path, inplace=True)
                method = "load_inplace"
            except AlreadyLoadedError:
                # A server from before load_inplace: the name is unserved until the second call returns.
                self.client.unload(name)
                self.client.load(name, path, inplace=False)
                method = "unload_then_load"
        except (NoAdapterError, AdapterRefusedError):
            self.impossible.add(version)  # settled: the periodic check does not try (and log) it again
            raise
        duration = time.monotonic() - started
        loaded_at = self.clock()
        lag = (loaded_at - trigger.occurred_at).total_seconds() if trigger.occurred_at is not None else None
        self.applied = version
        self.prune(version)
        logger.info(
            "%s: %s v%s served as %s by vLLM at %s (%s, %.3f s%s)",
            about,
            self.model,
            version,
            name,
            self.client.shown,
            method,
            duration,
            f"; {lag:.2f} s after the event" if lag is not None else "",
        )
        self._unrecorded.append(
            AdapterLoaded(
                kind=self.kind,
                name=self.model,
                version=version,
                previous_version=previous,
                served_name=name,
                url=self.client.shown,
                lora_path=path,
                method=method,
                trigger_event_id=trigger.event_id,
                lag_s=None if lag is None else round(lag, 4),
                duration_s=round(duration, 4),
            )
        )
        self.record_pending()
        return version

    def _version_of(self, root: str | None) -> str | None:
        prefix = f"{self.model}-v"
        tail = (root or "").rstrip("/").rsplit("/", 1)[-1]
        return tail[len(prefix) :] if tail.startswith(prefix) else None

    def trigger_of(self, value: bytes) -> Trigger | None:
        """The trigger a models-topic message carries: a champion move of the served model, else None (skipped).

        Raises:
            ValueError: a message that is not an event's JSON.
        """
        body = json.loads(value)
        payload = body.get("payload") or {}
        if body.get("type") not in ALIAS_CHANGE_TYPES or payload.get("alias") != "champion":
            return None
        if payload.get("name") != self.model:
            return None
        version = payload.get("version")
        return Trigger(
            str(body["event_id"]), parse_timestamp(body["occurred_at"]), None if version is None else str(version)
        )


RETRIED = (VllmUnavailableError, RegistryUnavailableError, StoreUnavailableError)
SETTLED = (NoAdapterError, AdapterRefusedError)


class VllmSyncPart:
    """The supervisor part: the consumer loop around :class:`VllmSync`."""

    name = "vllm-sync"

    def __init__(self, app: App) -> None:
        settings = app.settings.vllm
        if not settings.url:
            raise ConfigurationError(
                "the vllm-sync role needs vllm.url (ALIGND_VLLM_URL=http://vllm:8000): the vLLM server to keep on the "
                "champion"
            )
        self.app, self.settings = app, settings
        key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        self.client = VllmClient(settings.url, key, timeout_s=settings.request_timeout_s)
        self.sync = VllmSync(settings, app.registry, app.store, self.client)
        self.consumer: KafkaConsumer | None = None

    def _until_done(self, step: Callable[[], object], stop: threading.Event, about: str) -> bool:
        """Run ``step`` until it succeeds or is settled; False when the daemon stopped first.

        While it waits to try again the consumer keeps polling, its partitions paused: a vLLM server down for
        longer than the consumer's ``max_poll_interval_ms`` would otherwise have the broker drop the sidecar
        from its group, and the commit after the swap would fail and restart the role.
        """
        delay = self.settings.retry_initial_s
        paused = False
        try:
            while not stop.is_set():
                try:
                    step()
                    return True
                except RETRIED as exc:
                    logger.warning("%s: %s; trying again in %.1f s", about, exc, delay)
                except SETTLED as exc:
                    logger.error("%s: %s; skipped, the next champion move is applied", about, exc)
                    return True
                if self.consumer is not None and not paused:
                    self.consumer.pause(*self.consumer.assignment())
                    paused = True
                deadline = time.monotonic() + delay
                while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                    if self.consumer is not None:
                        got = self.consumer.poll(timeout_ms=int(min(left, KEEPALIVE_S) * 1000))
                        for tp, records in got.items():  # a partition assigned meanwhile: not read yet, after all
                            self.consumer.seek(tp, records[0].offset)
                            self.consumer.pause(tp)
                    else:
                        stop.wait(min(left, KEEPALIVE_S))
                delay = min(delay * 2, self.settings.retry_max_s)
            return False
        finally:
            if paused and self.consumer is not None:
                self.consumer.resume(*self.consumer.paused())

    def run(self, stop: threading.Event) -> None:
        from kafka.errors import CommitFailedError
        from kafka.structs import OffsetAndMetadata, TopicPartition

        topic = self.app.settings.topics.models
        self.consumer = consumer = self.app.kafka.consumer(
            group_id=self.settings.group_id, max_poll_records=50, max_poll_interval_ms=MAX_POLL_INTERVAL_MS
        )
        consumer.subscribe([topic])
        next_check = 0.0
        try:
            while not stop.is_set():
                if time.monotonic() >= next_check:
                    if not self._until_done(lambda: self._converge(None), stop, "vllm-sync check"):
                        return
                    next_check = time.monotonic() + self.settings.check_interval_s
                batches = consumer.poll(timeout_ms=500)
                for tp, records in sorted(batches.items(), key=lambda item: item[0].partition):
                    for record in records:
                        about = f"{topic}[{record.partition}]@{record.offset}"
                        try:
                            trigger = self.sync.trigger_of(record.value)
                        except (ValueError, KeyError, TypeError, AttributeError) as exc:
                            logger.error("%s: not an event (%s); skipped", about, exc)
                            trigger = None
                        else:
                            if trigger is not None:
                                about = f"event {trigger.event_id} ({self.sync.model} v{trigger.version})"
                                if not self._until_done(lambda t=trigger: self._converge(t), stop, about):
                                    return  # stopping: the offset stays, the event is applied after a restart
                        try:
                            consumer.commit(
                                {TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(record.offset + 1, "", -1)}
                            )
                        except CommitFailedError as exc:
                            # The group moved the partition elsewhere meanwhile: its new owner applies the event
                            # again, which is harmless (the registry is the truth, a swap to what is served is none).
                            logger.warning(
                                "%s: offset not committed (%s); the partition's new owner has it", about, exc
                            )
        finally:
            consumer.close()
            self.consumer = None

    def _converge(self, trigger: Trigger | None) -> None:
        self.sync.converge(trigger)

    def close(self) -> None:
        pass
