"""The serve role's part: the server, and the follower that keeps it on the registry's champion (docs/serve.md).

The follower reads the models topic as ``vllm-sync`` does (daemon/vllm_sync.py), with one difference: no consumer
group. Every serve replica must apply every champion move, so each assigns itself the topic's partitions and reads
from their end (what happened before it started is the registry's champion, read at start). On a move of the
``champion`` alias of ``alignd-policy`` it reads the champion from the registry (the truth: a backlog of moves
loads the last one once), downloads it under ``serve.adapter_dir`` and prepares it on this thread, then has the
model thread switch between two answers. Every ``check_interval_s`` it compares the registry with what is served
(a move it missed: Kafka away, an alias moved in MLflow's UI). MLflow or the store away: retried with a doubling
backoff; a version that cannot be served (no adapter, weights that do not load): logged once, the served version
kept, the next move applied.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.serve import ServeServer
from daemon.serve_log import ExchangeLog
from daemon.serve_model import BASE, AdapterLoadError, ModelHost
from events.codec import parse_timestamp
from events.errors import StoreUnavailableError
from events.messages.serving import AdapterLoaded
from events.names import ALIAS_CHANGE_TYPES, MODEL_NAMES
from trainers.models import pick_runtime
from trainers.registry import RegistryError, RegistryUnavailableError

if TYPE_CHECKING:
    from daemon.bootstrap import App

logger = logging.getLogger(__name__)

SOURCE = "alignd.serve"
KIND = "policy"
RETRIED = (RegistryUnavailableError, StoreUnavailableError, TimeoutError)


def champion_move(value: bytes, model: str) -> tuple[str, datetime, str | None] | None:
    """(event id, when, version) of a models-topic message that moves ``model``'s champion; None otherwise.

    Raises:
        ValueError, KeyError, TypeError: not an event's JSON.
    """
    body = json.loads(value)
    payload = body.get("payload") or {}
    if body.get("type") not in ALIAS_CHANGE_TYPES or payload.get("alias") != "champion":
        return None
    if payload.get("name") != model:
        return None
    version = payload.get("version")
    return str(body["event_id"]), parse_timestamp(body["occurred_at"]), None if version is None else str(version)


class ServePart:
    """The supervisor part: loads the champion, serves it, follows its moves."""

    name = "serve"

    def __init__(self, app: App) -> None:
        self.app, self.settings = app, app.settings.serve
        self.model_name = MODEL_NAMES[KIND]
        self.server: ServeServer | None = None
        self.impossible: set[str] = set()
        self.ready = threading.Event()  # set once the server answers (its port is known)

    # --- building ------------------------------------------------------------------------------------------

    def build(self) -> ServeServer:
        app, settings = self.app, self.settings
        runtime = pick_runtime(prefer=settings.device if settings.device != "auto" else "auto")
        if settings.device == "cuda" and runtime.device.type != "cuda":
            logger.warning("serve.device is cuda but no CUDA device is present; serving on the CPU")
        host = ModelHost(
            settings.base_model or app.settings.trainers.policy_model, runtime, max_queue=settings.max_queue
        )
        log = ExchangeLog(
            lambda: app.kafka.producer(linger_ms=20),
            interactions_topic=app.settings.topics.interactions,
            feedback_topic=app.settings.topics.feedback,
            max_buffer=settings.log_buffer,
            max_bytes=app.settings.ingest.max_message_bytes,
        )
        return ServeServer(settings, host, log, store=app.store, guard_settings=app.settings.guard)

    # --- the champion --------------------------------------------------------------------------------------

    def download(self, version: str) -> Path:
        """The version's artifacts under ``serve.adapter_dir``, downloaded once (into a temporary folder, then
        renamed: never half a folder)."""
        root = Path(self.settings.adapter_dir)
        final = root / f"{self.model_name}-v{version}"
        if final.is_dir():
            return final
        root.mkdir(parents=True, exist_ok=True)
        partial = root / f".partial-v{version}-{uuid.uuid4().hex[:8]}"
        try:
            local = self.app.registry.download(KIND, version, partial)
            local.rename(final)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return final

    def converge(self, event_id: str | None = None, moved_at: datetime | None = None) -> str | None:
        """Serve the registry's champion (the base model when there is none); returns the version switched to, or
        None when it was served already or cannot be.

        Raises:
            RegistryUnavailableError, StoreUnavailableError: try again later.
        """
        server = self.server
        assert server is not None
        champion = self.app.registry.get_by_alias(KIND, "champion")
        version = champion.version if champion is not None else BASE
        if version == server.version or version in self.impossible:
            return None
        previous = server.version
        started = time.monotonic()
        try:
            artifacts = None if version == BASE else self.download(version)
            prepared = server.model.prepare(version, artifacts)
            pause = server.model.install(prepared, timeout=600)
        except RegistryUnavailableError:
            raise
        except (RegistryError, AdapterLoadError) as exc:
            self.impossible.add(version)
            logger.error("serve: %s v%s cannot be served (%s); v%s stays", self.model_name, version, exc, previous)
            return None
        duration = time.monotonic() - started
        server.switched(version, moved_at)
        lag = (datetime.now(UTC) - moved_at).total_seconds() if moved_at is not None else None
        if version == BASE:
            logger.warning(
                "serve: %s has no champion; serving the base model %s", self.model_name, server.model.base_model
            )
        logger.info(
            "serve: %s v%s served (was v%s): prepared and switched in %.2f s, the model paused %.3f s%s",
            self.model_name,
            version,
            previous,
            duration,
            pause,
            f"; {lag:.2f} s after the alias moved" if lag is not None else "",
        )
        record = AdapterLoaded(
            kind=KIND,
            name=self.model_name,
            version=version,
            previous_version=previous,
            served_name=self.settings.served_name,
            url=server.url,
            lora_path=str(prepared.adapter_dir or ""),
            method="embedded",
            trigger_event_id=event_id,
            lag_s=None if lag is None else round(lag, 4),
            duration_s=round(duration, 4),
        )
        now = datetime.now(UTC)
        key = event_id or now.isoformat()
        try:
            self.app.store.append(
                [record.to_event(f"serving.adapter_loaded:serve:{server.port}:{version}:{key}", now, SOURCE)]
            )
        except Exception:  # noqa: BLE001 - the swap is done; its record is best effort, said in the log
            logger.warning("serve: v%s is served but its serving.adapter_loaded was not stored", version, exc_info=True)
        return version

    def _until_done(self, stop: threading.Event, event_id: str | None, moved_at: datetime | None) -> None:
        delay = self.settings.retry_initial_s
        while not stop.is_set():
            try:
                self.converge(event_id, moved_at)
                return
            except RETRIED as exc:
                logger.warning("serve: cannot read the champion (%s); trying again in %.1f s", exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, self.settings.retry_max_s)

    # --- the loop --------------------------------------------------------------------------------------------

    def _consumer(self) -> Any:
        from kafka import TopicPartition

        topic = self.app.settings.topics.models
        consumer = self.app.kafka.consumer(group_id=None, max_poll_records=50)
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            consumer.close()
            return None
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_end(*assigned)
        for tp in assigned:
            consumer.position(tp)  # resolve the end now: a move after this point is read, not skipped
        return consumer

    def run(self, stop: threading.Event) -> None:
        self.server = server = self.build()
        consumer = None
        try:
            consumer = self._consumer()
            server.model.start()  # swaps are installed by the model thread
            self._until_done(stop, None, None)  # the champion at start (after the topic's end was taken)
            server.start()
            self.ready.set()
            next_check = time.monotonic() + self.settings.check_interval_s
            while not stop.is_set():
                if consumer is None:
                    consumer = self._consumer()  # the topic did not exist yet
                    if consumer is None:
                        stop.wait(1.0)
                batches = consumer.poll(timeout_ms=200) if consumer is not None else {}
                moves = []
                for records in batches.values():
                    for record in records:
                        try:
                            move = champion_move(record.value, self.model_name)
                        except (ValueError, KeyError, TypeError, AttributeError) as exc:
                            logger.error(
                                "serve: %s[%d]@%d is not an event (%s); skipped",
                                record.topic,
                                record.partition,
                                record.offset,
                                exc,
                            )
                            continue
                        if move is not None:
                            moves.append(move)
                if moves:
                    event_id, moved_at, _version = max(moves, key=lambda m: m[1])  # the registry says which
                    self.impossible.clear()  # a new move may make a version servable again (artifacts fixed)
                    self._until_done(stop, event_id, moved_at)
                    next_check = time.monotonic() + self.settings.check_interval_s
                elif time.monotonic() >= next_check:
                    self._until_done(stop, None, None)
                    next_check = time.monotonic() + self.settings.check_interval_s
        finally:
            self.ready.clear()
            if consumer is not None:
                consumer.close()
            server.stop()

    def close(self) -> None:
        pass
