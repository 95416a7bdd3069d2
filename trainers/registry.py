"""The MLflow adapter: training runs and the model registry behind a thin port (docs/trainers.md).

Versions are promoted by moving aliases (``challenger`` → ``champion``); the deprecated stages are never used.
Every call builds on one explicit ``MlflowClient``, never on MLflow's global tracking URI, and every MLflow
failure leaves this module as a :class:`RegistryError` (:class:`RegistryUnavailableError` when a retry may help).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Literal

import mlflow.artifacts
import requests
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from events.errors import AlignmentError
from events.names import MODEL_NAMES
from events.redact import Scrubber, url_secrets
from events.sql_errors import OPERATIONAL_ERRORS, SQL_ERRORS

logger = logging.getLogger(__name__)

TRAINING_EVENT_TAG = "alignd.training_event_id"
DATASET_TAG_PREFIX = "alignd.dataset."
# MLflow's dataset table holds at most 36 characters of digest; the full hash goes in a run tag.
_DIGEST_CHARS = 36
_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"}

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]


class RegistryError(AlignmentError):
    """MLflow refused or failed a call; the message says what was asked and why it failed."""


class RegistryUnavailableError(RegistryError):
    """MLflow could not be reached (connection refused, timeout, database locked): the call may succeed later."""


class VersionNotFoundError(RegistryError):
    """The registered model has no such version or alias."""


def _is_transient(exc: BaseException) -> bool:
    # The REST client wraps connection failures in a code-less MlflowException; only the chain says why.
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MlflowException) and seen.error_code in _TRANSIENT_CODES:
            return True
        # A database-backed tracking store raises SQLAlchemy's errors: its OperationalError is transient.
        if isinstance(seen, (requests.ConnectionError, requests.Timeout, ConnectionError, *OPERATIONAL_ERRORS)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# Masks URL credentials and password=... pairs; a registry's own also knows the secrets of its URIs.
_PLAIN = Scrubber()


@contextmanager
def _boundary(doing: str, scrubber: Scrubber = _PLAIN) -> Iterator[None]:
    try:
        yield
    except RegistryError:
        raise
    except (MlflowException, *SQL_ERRORS, requests.RequestException, OSError) as exc:
        # MLflow's messages quote the tracking URI ("API request to http://user:pw@host/... failed"), and a
        # database store's the DSN: the message is scrubbed here, before it reaches a log, the CLI or an event.
        reason = (exc.message if isinstance(exc, MlflowException) else str(exc)).strip().splitlines()[0][:500]
        if _is_transient(exc):
            raise RegistryUnavailableError(
                scrubber.scrub(f"MLflow is unavailable, could not {doing}: {reason}")
            ) from exc
        raise RegistryError(scrubber.scrub(f"MLflow could not {doing}: {reason}")) from exc


@dataclass(frozen=True)
class DatasetInfo:
    """A training snapshot: the projection rows up to a known event ``seq``, and their hash."""

    name: str
    kind: str
    from_seq: int
    to_seq: int
    sha256: str
    rows: int

    def tags(self) -> dict[str, str]:
        return {DATASET_TAG_PREFIX + k: str(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class RegisteredVersion:
    kind: str
    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]
    aliases: tuple[str, ...]
    created_at: datetime


@dataclass
class TrainingRun:
    """An open MLflow run; as a context manager it ends FINISHED, or FAILED when the block raises."""

    client: MlflowClient
    run_id: str
    scrubber: Scrubber = field(default=_PLAIN, repr=False)
    ended: bool = field(default=False, init=False)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(datetime.now(UTC).timestamp() * 1000)
        with _boundary(f"log metrics to run {self.run_id}", self.scrubber):
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_series(self, name: str, values: list[float]) -> None:
        """One metric with a value per step (a probe's accuracy per layer), in one request."""
        now = int(datetime.now(UTC).timestamp() * 1000)
        with _boundary(f"log metric {name} to run {self.run_id}", self.scrubber):
            self.client.log_batch(self.run_id, metrics=[Metric(name, float(v), now, i) for i, v in enumerate(values)])

    def log_params(self, params: dict[str, object]) -> None:
        with _boundary(f"log params to run {self.run_id}", self.scrubber):
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        with _boundary(f"tag run {self.run_id}", self.scrubber):
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_dataset(self, snapshot: DatasetInfo) -> None:
        """Record the snapshot as the run's training input and as ``alignd.dataset.*`` tags."""
        source = {"store": "alignd", "kind": snapshot.kind, "from_seq": snapshot.from_seq, "to_seq": snapshot.to_seq}
        dataset = Dataset(
            name=snapshot.name,
            digest=snapshot.sha256[:_DIGEST_CHARS],
            source_type="alignd-events",
            source=json.dumps(source),
            profile=json.dumps({"num_rows": snapshot.rows}),
        )
        with _boundary(f"log dataset {snapshot.name} to run {self.run_id}", self.scrubber):
            self.client.log_inputs(self.run_id, [DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, "training")])])
        self.set_tags(snapshot.tags())

    def log_artifacts(self, local_dir: Path, artifact_path: str) -> None:
        with _boundary(f"upload {local_dir} to run {self.run_id}", self.scrubber):
            self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def end(self, status: RunStatus = "FINISHED") -> None:
        with _boundary(f"end run {self.run_id}", self.scrubber):
            self.client.set_terminated(self.run_id, status)
        self.ended = True
        logger.info("MLflow run %s ended %s", self.run_id, status)

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.ended:
            self.end("FAILED" if exc_type is not None else "FINISHED")


class ModelRegistry:
    """Training runs and registered versions of ``alignd-reward`` and ``alignd-policy``.

    Args:
        tracking_uri: where runs are recorded (``sqlite:///mlflow.db``, ``http://mlflow:5000``).
        registry_uri: where versions are registered; the tracking URI when not given.
        experiment: the experiment runs go in, created on first use.
        artifact_location: artifact root for that experiment when this creates it (MLflow's default is
            ``./mlruns`` under the current directory for a database URI).
    """

    def __init__(
        self,
        tracking_uri: str,
        registry_uri: str | None = None,
        experiment: str = "alignd",
        artifact_location: str | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        # Passed explicitly so that MLFLOW_REGISTRY_URI or a global set_registry_uri never redirects us.
        self.registry_uri = registry_uri or tracking_uri
        self.experiment = experiment
        self.artifact_location = artifact_location
        self.scrubber = Scrubber(
            [*url_secrets(tracking_uri), *url_secrets(self.registry_uri), *url_secrets(artifact_location)]
        )
        # A database URI's store is opened here (MLflow retries a refused connection for about a minute first).
        with _boundary("open the tracking and registry stores", self.scrubber):
            self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=self.registry_uri)
        self._experiment_id: str | None = None

    # --- runs ---------------------------------------------------------------------------------------

    def start_run(self, kind: str, run_name: str, params: dict[str, object], tags: dict[str, str]) -> TrainingRun:
        name = _model_name(kind)
        with _boundary(f"start a {name} run in experiment {self.experiment}", self.scrubber):
            run = self.client.create_run(
                self._ensure_experiment(), run_name=run_name, tags={"alignd.kind": kind, **tags}
            )
        training = TrainingRun(self.client, run.info.run_id, self.scrubber)
        logger.info("MLflow run %s started for %s (%s)", training.run_id, name, run_name)
        if params:
            training.log_params(params)
        return training

    def attach_run(self, run_id: str) -> TrainingRun:
        """A handle on a run another process started (the training child logs its per-step metrics here)."""
        return TrainingRun(self.client, run_id, self.scrubber)

    def _ensure_experiment(self) -> str:
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                try:
                    self._experiment_id = self.client.create_experiment(self.experiment, self.artifact_location)
                except MlflowException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # another process created it first
                        raise
                    return self._ensure_experiment()
            elif found.lifecycle_stage == "deleted":
                raise RegistryError(
                    f"MLflow experiment {self.experiment!r} is deleted; restore it (`mlflow experiments restore "
                    f"--experiment-id {found.experiment_id}`) or delete it for good before training"
                )
            else:
                self._experiment_id = found.experiment_id
        return self._experiment_id

    def run_metrics(self, run_id: str) -> dict[str, float]:
        """The latest value of each metric the run logged."""
        with _boundary(f"read run {run_id}", self.scrubber):
            return dict(self.client.get_run(run_id).data.metrics)

    def run_params(self, run_id: str) -> dict[str, str]:
        with _boundary(f"read run {run_id}", self.scrubber):
            return dict(self.client.get_run(run_id).data.params)

    # --- versions -----------------------------------------------------------------------------------

    def register(
        self, kind: str, run_id: str, artifact_path: str, tags: dict[str, str], alias: str | None = "challenger"
    ) -> RegisteredVersion:
        """Register the run's artifacts as a new version, tag it, and point ``alias`` at it.

        A retry with the same ``alignd.training_event_id`` tag returns the version the first attempt made.
        The run's ``alignd.dataset.*`` tags are copied onto the version so it names its events on its own.

        Raises:
            RegistryError: the run failed, does not exist or has no artifacts at ``artifact_path`` (a folder),
                or MLflow refused the call.
        """
        name = _model_name(kind)
        with _boundary(f"register run {run_id} as a version of {name}", self.scrubber):
            existing = self._find_by_event(name, tags.get(TRAINING_EVENT_TAG))
            if existing is not None:
                logger.info("%s version %s already registered from run %s", name, existing.version, existing.run_id)
                mv = existing
            else:
                run = self.client.get_run(run_id)
                if run.info.status in ("FAILED", "KILLED"):
                    raise RegistryError(f"run {run_id} ended {run.info.status}; only successful runs are registered")
                if not self.client.list_artifacts(run_id, artifact_path):
                    raise RegistryError(
                        f"run {run_id} has nothing under {artifact_path!r}; log the model folder there "
                        "(TrainingRun.log_artifacts) before registering it"
                    )
                copied = {k: v for k, v in run.data.tags.items() if k.startswith(DATASET_TAG_PREFIX)}
                self._ensure_model(name)
                mv = self.client.create_model_version(
                    name, f"runs:/{run_id}/{artifact_path}", run_id, tags={**copied, **tags}
                )
                logger.info("registered %s version %s from run %s", name, mv.version, run_id)
            if alias is not None:
                current = self.client.get_registered_model(name).aliases.get(alias)
                # A late retry must not drag the alias back from a newer version to this one.
                if current is None or int(current) < int(mv.version):
                    self.set_alias(kind, alias, str(mv.version))
        return self.get(kind, str(mv.version))

    def _find_by_event(self, name: str, event_id: str | None) -> ModelVersion | None:
        if event_id is None:
            return None
        if "'" in event_id:
            raise RegistryError(f"training event id {event_id!r} contains a quote; MLflow filters cannot express it")
        found = self.client.search_model_versions(f"name = '{name}' and tags.`{TRAINING_EVENT_TAG}` = '{event_id}'")
        return min(found, key=lambda mv: int(mv.version)) if found else None

    def _ensure_model(self, name: str) -> None:
        try:
            self.client.get_registered_model(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            try:
                self.client.create_registered_model(name)
            except MlflowException as again:
                if again.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise

    def get(self, kind: str, version: str | int) -> RegisteredVersion:
        name = _model_name(kind)
        with _boundary(f"read {name} version {version}", self.scrubber):
            try:
                return _to_version(kind, self.client.get_model_version(name, str(version)))
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    raise VersionNotFoundError(
                        f"{name} has no version {version}; `alignd models list` shows the versions"
                    ) from exc
                raise

    def get_by_alias(self, kind: str, alias: str) -> RegisteredVersion | None:
        """The version ``alias`` points at, or None when the alias is not set (or nothing is registered)."""
        version = self._aliases(_model_name(kind)).get(alias)
        return None if version is None else self.get(kind, version)

    def _aliases(self, name: str) -> dict[str, str]:
        # Read from the registered model: search results leave ModelVersion.aliases empty, and
        # get_model_version_by_alias reports a missing alias as INVALID_PARAMETER_VALUE, not "not found".
        with _boundary(f"read the aliases of {name}", self.scrubber):
            try:
                return {a: str(v) for a, v in self.client.get_registered_model(name).aliases.items()}
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return {}
                raise

    def list_versions(self, kind: str | None = None) -> list[RegisteredVersion]:
        """Every version of one kind (both when None), newest first."""
        versions: list[RegisteredVersion] = []
        for k in [kind] if kind is not None else list(MODEL_NAMES):
            name = _model_name(k)
            by_version: dict[str, list[str]] = {}
            for alias, version in self._aliases(name).items():
                by_version.setdefault(version, []).append(alias)
            with _boundary(f"list the versions of {name}", self.scrubber):
                page = self.client.search_model_versions(f"name = '{name}'")
                while True:
                    for mv in page:
                        versions.append(_to_version(k, mv, tuple(sorted(by_version.get(str(mv.version), [])))))
                    if not page.token:
                        break
                    page = self.client.search_model_versions(f"name = '{name}'", page_token=page.token)
        return sorted(versions, key=lambda v: (v.created_at, int(v.version)), reverse=True)

    def set_alias(self, kind: str, alias: str, version: str | int) -> None:
        name = _model_name(kind)
        self.get(kind, version)  # a clear VersionNotFoundError rather than MLflow's message
        with _boundary(f"point {name}@{alias} at version {version}", self.scrubber):
            self.client.set_registered_model_alias(name, alias, str(version))
        logger.info("%s@%s now points at version %s", name, alias, version)

    def delete_alias(self, kind: str, alias: str) -> None:
        """Remove the alias; doing so when it is not set is not an error."""
        name = _model_name(kind)
        if alias in self._aliases(name):
            with _boundary(f"delete {name}@{alias}", self.scrubber):
                self.client.delete_registered_model_alias(name, alias)
            logger.info("%s@%s deleted", name, alias)

    def set_tags(self, kind: str, version: str | int, tags: dict[str, str]) -> None:
        name = _model_name(kind)
        self.get(kind, version)
        with _boundary(f"tag {name} version {version}", self.scrubber):
            for key, value in tags.items():
                self.client.set_model_version_tag(name, str(version), key, str(value))

    def download(self, kind: str, version: str | int, dst: Path) -> Path:
        """Copy the version's artifacts under ``dst``; returns the folder that holds them."""
        registered = self.get(kind, version)
        with _boundary(f"download {registered.name} version {version} from {registered.source}", self.scrubber):
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=registered.source,
                dst_path=str(dst),
                tracking_uri=self.tracking_uri,
                registry_uri=self.registry_uri,
            )
        return Path(local)


def _model_name(kind: str) -> str:
    try:
        return MODEL_NAMES[kind]
    except KeyError:
        raise RegistryError(f"unknown model kind {kind!r}; kinds are {', '.join(MODEL_NAMES)}") from None


def _to_version(kind: str, mv: ModelVersion, aliases: tuple[str, ...] | None = None) -> RegisteredVersion:
    return RegisteredVersion(
        kind=kind,
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id,
        source=mv.source or "",
        tags=dict(mv.tags),
        aliases=tuple(sorted(mv.aliases)) if aliases is None else aliases,
        created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC),
    )
