"""Settings: a YAML file and ``ALIGND_*`` environment variables, validated into frozen objects.

This is the only module that reads the environment. Variables map onto sections by their first word:
``ALIGND_DATABASE_URL`` -> ``database.url``, ``ALIGND_KAFKA_BOOTSTRAP_SERVERS`` -> ``kafka.bootstrap_servers``,
``ALIGND_MLFLOW_TRACKING_URI`` -> ``mlflow.tracking_uri``. The environment wins over the file. Any setting may
come from a file instead (a Docker secret): ``ALIGND_HTTP_TOKEN_FILE=/run/secrets/alignd_http_token``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from events.errors import ConfigurationError
from events.model import DEFAULT_MAX_MESSAGE_BYTES
from events.redact import MASK, Scrubber, mask_url, mask_url_list, url_secrets

ENV_PREFIX = "ALIGND_"
_FROZEN = ConfigDict(extra="forbid", frozen=True)


class _MaskedRepr(BaseModel):
    """A settings section whose repr (in a log line, a traceback's locals) shows its URLs and secrets masked."""

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, _masked(name or "", value)


class DatabaseSettings(_MaskedRepr):
    model_config = _FROZEN
    url: str = Field("sqlite:///alignd.db", description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://...")
    password: SecretStr | None = Field(
        None, description="password of a postgresql url written without one (kept out of the url: a secret file)"
    )

    @model_validator(mode="before")
    @classmethod
    def _merge_password(cls, data: Any) -> Any:
        # Every consumer opens `url`; a password given apart (ALIGND_DATABASE_PASSWORD_FILE) joins it here.
        if not isinstance(data, dict) or data.get("password") in (None, ""):
            return data
        password = data["password"]
        password = password.get_secret_value() if isinstance(password, SecretStr) else str(password)
        return {**data, "url": _with_password(str(data.get("url", cls.model_fields["url"].default)), password)}

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str) -> str:
        if not (url.startswith("sqlite") or url.startswith("postgresql")):
            # Only the scheme is named: a value without one may be anything, a password pasted in the wrong place.
            scheme = url.split("://", 1)[0] if re.fullmatch(r"[A-Za-z][\w+.-]*://.*", url, re.S) else None
            raise ValueError(
                f"{'scheme ' + repr(scheme) if scheme else 'a value without a scheme'} is not supported; "
                "use sqlite:///FILE or postgresql+psycopg://USER@HOST/DB"
            )
        return url


def _with_password(url: str, password: str) -> str:
    """``url`` (postgresql+psycopg://USER@HOST/DB) with ``password`` given to its user, percent-encoded."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("postgresql"):
        raise ValueError("password goes with a postgresql+psycopg://USER@HOST/DB url, and url is not one")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo, at, host = authority.rpartition("@")
    user, colon, written = userinfo.partition(":")
    if not at or not user:
        raise ValueError("password needs a user name in url (postgresql+psycopg://USER@HOST/DB)")
    if colon:
        if unquote(written) == password:  # already merged (settings validated again)
            return url
        raise ValueError("url has a password as well as password; keep one (the password setting, from a file)")
    return f"{scheme}://{user}:{quote(password, safe='')}@{host}{rest[len(authority) :]}"


class KafkaSettings(_MaskedRepr):
    """Client settings passed through to kafka-python; enough for managed clusters (SASL over SSL, mTLS)."""

    model_config = _FROZEN
    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "alignd"
    group_id: str = "alignd-ingest"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = Field(10_000, ge=1000)
    request_timeout_ms: int = Field(30_000, ge=1000)

    @model_validator(mode="after")
    def _security(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            missing = [n for n in ("sasl_mechanism", "sasl_username", "sasl_password") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"security_protocol {self.security_protocol} needs {', '.join(missing)}")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: no such file {str(path)!r}")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("ssl_certfile and ssl_keyfile go together (client certificate and its key)")
        return self

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments common to kafka-python's consumer, producer and admin client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.sasl_mechanism is not None:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kwargs["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name) is not None:
                    kwargs[name] = str(getattr(self, name))
            if self.ssl_password is not None:
                kwargs["ssl_password"] = self.ssl_password.get_secret_value()
        return kwargs


class TopicsSettings(BaseModel):
    model_config = _FROZEN
    interactions: str = "alignd.interactions"
    feedback: str = "alignd.feedback"
    alerts: str = "alignd.alerts"
    models: str = "alignd.models"
    dlq: str = "alignd.dlq"
    #: OTLP traces from the OpenTelemetry Collector's kafka exporter (its default topic is ``otlp_spans``); LLM
    #: spans become interactions (docs/otel.md). Unset: not consumed.
    otlp_spans: str | None = Field(None, description="topic of OTLP traces (Collector kafka exporter); unset = off")
    #: OTLP logs from the Collector's kafka exporter (its default topic is ``otlp_logs``): the GenAI events among them
    #: carry the prompts and responses of the LLM spans of ``otlp_spans`` and are joined with them (docs/otel.md).
    otlp_logs: str | None = Field(
        None, description="topic of OTLP logs (Collector kafka exporter), joined with otlp_spans; unset = off"
    )

    @model_validator(mode="after")
    def _logs_need_spans(self) -> TopicsSettings:
        # Refused here, where the CLI names the setting, rather than when the ingestor is built.
        if self.otlp_logs and not self.otlp_spans:
            raise ValueError(
                "otlp_logs is set without otlp_spans: the log records carry the content of LLM spans and are "
                "joined with them; set topics.otlp_spans to the Collector's traces topic too"
            )
        return self


class IngestSettings(BaseModel):
    model_config = _FROZEN
    max_message_bytes: int = Field(DEFAULT_MAX_MESSAGE_BYTES, ge=1024)
    poll_timeout_ms: int = Field(500, ge=10)
    max_poll_records: int = Field(5000, ge=1)
    retry_initial_s: float = Field(0.5, gt=0)
    retry_max_s: float = Field(10.0, gt=0)
    kafka_commit_interval_s: float = Field(
        1.0, ge=0, description="how often stored offsets are also committed to Kafka"
    )
    project: bool = Field(True, description="fold projections after each stored batch")
    otlp_encoding: Literal["auto", "otlp_proto", "otlp_json"] = Field(
        "auto",
        description="encoding of topics.otlp_spans and topics.otlp_logs: auto (JSON if it starts with '{'), "
        "otlp_proto or otlp_json",
    )
    otlp_join_window_s: float = Field(
        60.0,
        gt=0,
        description="how long an LLM span and the log records with its content wait for each other (topics.otlp_logs)",
    )


LIGHT_DETECTORS = (
    "pii",
    "negative_feedback_spike",
    "hallucination_reports",
    "response_length_drift",
    "feedback_flooding",
    "jailbreak_attempt",
    "jailbreak_success",
    "toxicity",
    "champion_regression",
)


#: ``monitors.jailbreak_classifier``'s value for the registry's champion classifier, rather than a folder.
CHAMPION_CLASSIFIER = "champion"


class MonitorsSettings(BaseModel):
    """Which detectors run, and the rules that turn their alerts into enforcement requests."""

    model_config = _FROZEN
    detectors: tuple[str, ...] = Field(LIGHT_DETECTORS, description="comma-separated in ALIGND_MONITORS_DETECTORS")
    embeddings: bool = Field(True, description="jailbreak similarity with all-MiniLM-L6-v2 (offline)")
    jailbreak_pattern_boost: float = Field(
        0.6,
        ge=0,
        le=1,
        description="weight of the pattern score added to jailbreak similarity (0.6 chosen on the benchmark's dev "
        "split; 0.3-0.4 flags fewer benign role-play prompts, at some recall)",
    )
    embedding_model: str | None = Field(None, description="a Hugging Face model name instead of the packaged MiniLM")
    jailbreak_classifier: str | None = Field(
        None,
        description="'champion' (the promoted alignd-detector version, `alignd train detector`) or the folder of a "
        "trained jailbreak-attempt classifier (python -m trainers.detector); when set it decides jailbreak_attempt "
        "and jailbreak_success, not patterns + similarity (docs/jailbreak-classifier.md)",
    )
    jailbreak_classifier_runtime: Literal["onnx-int8", "onnx", "torch"] = Field(
        "onnx-int8", description="how the classifier runs (int8 ONNX: the fastest, accuracy in the docs)"
    )
    jailbreak_classifier_threshold: float | None = Field(
        None, ge=0, le=1, description="probability that flags (default: the model's, chosen on its validation split)"
    )
    toxicity_model: str | None = Field(None, description="a Hugging Face classifier instead of alt-profanity-check")
    toxicity_window: int = Field(
        200,
        ge=10,
        description="toxicity: a version's recent responses tested against the ceiling (fewer: sooner alerts on "
        "less evidence; the demo uses 20 so its few dozen served answers can raise one)",
    )
    rules: tuple[str, ...] | None = Field(None, description="detector:action[:min_severity], comma-separated")
    batch_size: int = Field(1000, ge=1)
    regression_accuracy_drop: float = Field(
        0.05, ge=0, le=1, description="champion_regression: held-out reward accuracy drop that alerts (absolute)"
    )
    regression_unsafe_rise: float = Field(
        0.05, ge=0, le=1, description="champion_regression: red-team unsafe-rate rise that alerts (absolute)"
    )
    explain_alerts: bool = Field(
        True,
        description="reward_drift and over_optimisation alerts carry the integrated-gradients attribution of their "
        "most extreme evidence example (docs/attribution.md)",
    )
    explain_steps: int = Field(32, ge=1, le=1024, description="integration steps of an alert's attribution")
    agreement_alpha: float = Field(
        1e-4, gt=0, lt=1, description="contributor_agreement: one-sided level of each contributor's binomial test"
    )
    agreement_margin: float = Field(
        0.1, ge=0, lt=1, description="contributor_agreement: agreement an honest contributor may lack against others'"
    )
    agreement_min_pairs: int = Field(20, ge=1, description="contributor_agreement: scored pairs before a model test")
    agreement_min_peer: int = Field(5, ge=1, description="contributor_agreement: peer comparisons before a peer test")
    agreement_min_population: int = Field(
        100, ge=1, description="contributor_agreement: everyone else's observations before either test"
    )
    agreement_peer_floor: float = Field(
        0.6, ge=0, lt=1, description="contributor_agreement: peer agreement honest users are held to at least"
    )

    @field_validator("detectors", "rules", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else value


class MlflowSettings(_MaskedRepr):
    model_config = _FROZEN
    tracking_uri: str = "sqlite:///mlflow.db"
    registry_uri: str | None = None
    artifact_location: str | None = Field(
        None, description="artifact root of the alignd experiment when alignd creates it (default: MLflow's ./mlruns)"
    )


class TrainersSettings(_MaskedRepr):
    """Training jobs: models, limits of the child process, and trainer/evaluation overrides (YAML mappings)."""

    model_config = _FROZEN
    work_dir: str = Field(".alignd/trainers", description="job folders, checkpoints and downloaded champions")
    reward_model: str = Field("all-MiniLM-L6-v2", description="reward backbone (offline default) or a HF name")
    policy_model: str = Field("SmolLM2-135M-Instruct", description="policy (offline default) or a HF causal LM name")
    timeout_s: float = Field(3600.0, gt=0, description="wall-clock limit of one training job")
    memory_limit_mb: int | None = Field(None, ge=256, description="resident-memory limit of a job's processes")
    nproc: int = Field(1, ge=1, description="data-parallel processes per job (torchrun; one per GPU)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dataset_limit: int | None = Field(None, ge=1, description="train on at most the N most recent examples")
    constitution: str | None = Field(None, description="YAML file of principles (default: the packaged constitution)")
    revision_limit: int = Field(32, ge=1, description="flagged interactions revised per `alignd train revise`")
    reward: dict[str, Any] = Field(default_factory=dict, description="RewardConfig overrides (trainers.config)")
    policy: dict[str, Any] = Field(default_factory=dict, description="PolicyConfig overrides (trainers.config)")
    evaluation: dict[str, Any] = Field(default_factory=dict, description="EvaluationConfig overrides, gates included")
    detector: dict[str, Any] = Field(
        default_factory=dict,
        description="DetectorTrainConfig overrides (trainers.config): the jailbreak classifier's data and settings",
    )


class ScheduleSettings(BaseModel):
    """When training runs (daemon/scheduler.py): cron, data volume, and the leader lease between replicas."""

    model_config = _FROZEN
    reward_cron: str | None = Field("0 3 * * *", description="cron for the reward model (empty: off)")
    policy_cron: str | None = Field("0 4 * * *", description="cron for the policy (empty: off)")
    evaluation_cron: str | None = Field(
        None,
        description="cron for re-evaluating the champions (safety suite, held-out reward accuracy; docs/trainers.md); "
        "runs while training is paused (empty: off)",
    )
    reward_after_pairs: int = Field(200, ge=0, description="retrain the reward model after N new pairs (0: off)")
    policy_after_examples: int = Field(500, ge=0, description="retrain the policy after N new examples (0: off)")
    detector_cron: str | None = Field(
        None, description="cron for the jailbreak classifier (empty: off; it retrains on verdicts below)"
    )
    detector_after_verdicts: int = Field(
        25,
        ge=0,
        description="retrain the jailbreak classifier after N new reviewers' verdicts on jailbreak alerts (0: off)",
    )
    policy_objective: Literal["sft", "dpo", "rloo", "ppo", "grpo"] = "dpo"
    check_interval_s: float = Field(60.0, gt=0)
    lease_s: float = Field(15.0, gt=0, description="leader lease; another replica takes over after it expires")
    failure_backoff_s: float = Field(1800.0, ge=0)
    orphan_after_s: float = Field(7200.0, gt=0)
    timezone: str = "UTC"

    @field_validator("reward_cron", "policy_cron", "evaluation_cron", "detector_cron")
    @classmethod
    def _crontab(cls, value: str | None) -> str | None:
        # Checked here rather than when the leader starts its scheduler: there, one bad expression would keep
        # every job (training included) from being scheduled, with only a log line to say why.
        if value:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(value)
            except ValueError as exc:
                raise ValueError(
                    f"{value!r} is not a crontab expression (minute hour day month weekday, e.g. '30 5 * * *'): {exc}"
                ) from None
        return value


class HttpSettings(_MaskedRepr):
    """The daemon's HTTP server: health, readiness, metrics and the read-only audit review page."""

    model_config = _FROZEN
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 in a container)")
    port: int = Field(8080, ge=0, le=65535)
    token: SecretStr | None = Field(None, description="bearer token for requests that change state; none: refused")
    mlflow_ui_url: str | None = Field(None, description="links from audit records to MLflow runs and versions")
    # Limits under load and against hostile clients (daemon.http.HttpLimits says what each does).
    backlog: int = Field(2048, ge=1, description="connections queued before accept (capped by net.core.somaxconn)")
    keep_alive_timeout: int = Field(5, ge=1, description="seconds an idle keep-alive connection is kept")
    header_timeout: float = Field(5.0, gt=0, description="seconds to send a complete request head (and a body)")
    max_header_bytes: int = Field(16384, ge=1024, description="request line and headers; beyond: 400, closed")
    max_body_bytes: int = Field(65536, ge=0, description="request body; beyond: 413, connection closed")
    threads: int = Field(2, ge=1, description="store reads and page renderings at a time")
    chain_check_s: float = Field(2.0, ge=0, description="seconds one audit-chain check serves /audit (0: per page)")
    # Not limits of the server: where it runs (daemon/http_process.py says why).
    isolation: Literal["auto", "process", "thread"] = Field(
        "auto", description="the server in a process of its own (auto: when other roles run beside it)"
    )
    nice: int = Field(5, ge=0, le=19, description="priority the HTTP process gives up, so other roles come first")


GUARD_DETECTORS = ("jailbreak_patterns", "pii", "toxicity")


class GuardSettings(BaseModel):
    """The guard (``alignd run --role guard``): ``POST /v1/guard`` with the fast detectors and the guard rules."""

    model_config = _FROZEN
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 in a container)")
    port: int = Field(8090, ge=0, le=65535)
    detectors: tuple[str, ...] = Field(
        ("jailbreak_patterns", "pii"),
        description="of jailbreak_patterns, pii, toxicity (comma-separated; toxicity costs ~1-2 ms a call)",
    )
    block_on: tuple[str, ...] = Field(
        ("jailbreak_patterns",), description="detectors whose finding blocks; the others flag (pii redacts)"
    )
    refresh_s: float = Field(1.0, gt=0, description="seconds between reads of new guard rules")
    rule_ttl_s: float = Field(86400.0, ge=0, description="life of a rule without expires_at (0: until lifted)")
    max_body_bytes: int = Field(65536, ge=1024, description="request body; beyond: 413, connection closed")
    header_timeout: float = Field(5.0, gt=0, description="seconds to send a complete request head (and a body)")
    queue_size: int = Field(10000, ge=1, description="decisions waiting to be stored; beyond: dropped, counted")

    @field_validator("detectors", "block_on", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else value

    @field_validator("detectors", "block_on")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [v for v in value if v not in GUARD_DETECTORS]
        if unknown:
            raise ValueError(
                f"unknown guard detector {', '.join(unknown)}; expected some of {', '.join(GUARD_DETECTORS)}"
            )
        return value


class VllmSettings(_MaskedRepr):
    """The ``vllm-sync`` role (``alignd run --role vllm-sync``): keeps a vLLM server's LoRA adapter on the champion
    (docs/vllm.md)."""

    model_config = _FROZEN
    url: str | None = Field(None, description="the vLLM server, e.g. http://vllm:8000; the role needs it")
    api_key: SecretStr | None = Field(None, description="the server's --api-key (VLLM_API_KEY), sent as a bearer token")
    kind: Literal["policy"] = Field("policy", description="the registered model whose champion is served (LoRA)")
    served_name: str = Field("alignd-policy-champion", description="the adapter's name: the `model` clients send")
    adapter_dir: str = Field("adapters", description="where versions are downloaded: a folder vLLM reads too")
    server_adapter_dir: str | None = Field(
        None, description="adapter_dir as the vLLM server sees it (its mount point); unset: the same path"
    )
    group_id: str = Field("alignd-vllm-sync", description="the consumer group following the models topic")
    request_timeout_s: float = Field(60.0, gt=0, description="seconds one call to vLLM may take (a load reads weights)")
    retry_initial_s: float = Field(1.0, gt=0, description="first wait after vLLM or MLflow failed; doubles")
    retry_max_s: float = Field(30.0, gt=0, description="longest wait between tries")
    check_interval_s: float = Field(
        30.0, gt=0, description="seconds between checks that the server still serves the champion (a restart)"
    )
    keep_adapters: int = Field(
        2, ge=1, description="versions kept in adapter_dir after a swap, the served one included; older ones deleted"
    )


class ServeSettings(_MaskedRepr):
    """The ``serve`` role (``alignd run --role serve``): an OpenAI-compatible chat server answering with the
    registry's champion policy, guarded, every exchange logged (docs/serve.md)."""

    model_config = _FROZEN
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 in a container)")
    port: int = Field(8100, ge=0, le=65535)
    served_name: str = Field("alignd-policy", description="the `model` clients send and /v1/models lists")
    api_key: SecretStr | None = Field(None, description="bearer token clients must send; none: any is accepted")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the policy runs (auto: CUDA if present)")
    base_model: str | None = Field(
        None, description="served when no champion is registered (default: trainers.policy_model)"
    )
    adapter_dir: str = Field(".alignd/serve", description="where champion versions are downloaded")
    max_tokens: int = Field(256, ge=1, description="tokens generated when a request gives no max_tokens")
    max_tokens_limit: int = Field(2048, ge=1, description="largest max_tokens a request may ask (beyond: 400)")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="request body; beyond: 413, connection closed")
    header_timeout: float = Field(5.0, gt=0, description="seconds to send a complete request head (and a body)")
    max_queue: int = Field(64, ge=1, description="requests waiting for the model; beyond: 503")
    guard: bool = Field(True, description="prompts and answers through the guard (the guard: section's detectors)")
    stream_holdback_chars: int = Field(
        64, ge=0, description="characters a stream holds back so PII split across tokens is redacted before it goes"
    )
    log_buffer: int = Field(
        10000, ge=1, description="interactions/feedback waiting for Kafka; beyond: dropped, counted"
    )
    check_interval_s: float = Field(30.0, gt=0, description="seconds between checks of the registry's champion")
    retry_initial_s: float = Field(1.0, gt=0, description="first wait after MLflow failed; doubles")
    retry_max_s: float = Field(30.0, gt=0, description="longest wait between tries")


class LogSettings(BaseModel):
    model_config = _FROZEN
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class Settings(BaseModel):
    model_config = _FROZEN
    database: DatabaseSettings = DatabaseSettings()
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicsSettings = TopicsSettings()
    ingest: IngestSettings = IngestSettings()
    monitors: MonitorsSettings = MonitorsSettings()
    mlflow: MlflowSettings = MlflowSettings()
    trainers: TrainersSettings = TrainersSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    http: HttpSettings = HttpSettings()
    vllm: VllmSettings = VllmSettings()
    guard: GuardSettings = GuardSettings()
    serve: ServeSettings = ServeSettings()
    log: LogSettings = LogSettings()

    def redacted(self) -> dict[str, Any]:
        """The settings as plain data with secrets masked (for ``config show`` and logs).

        Secret settings show as ``**********``; every URL (database, MLflow, the MLflow UI, Kafka's servers, any
        string value holding ``://``) goes through :func:`events.redact.mask_url`; a string under a name that
        says secret (``hf_token`` in a trainer override) is masked whole.
        """
        data = self.model_dump(mode="json")
        for section, values in data.items():
            for name, value in values.items():
                if isinstance(getattr(getattr(self, section), name), SecretStr) and value is not None:
                    values[name] = "**********"
                else:
                    values[name] = _masked(name, value)
        return data

    def __repr__(self) -> str:
        # Every section's secrets, HttpSettings' mlflow_ui_url included, whatever the section's own repr shows.
        return Scrubber(self.known_secrets(env={})).scrub(super().__repr__())

    def __str__(self) -> str:
        return Scrubber(self.known_secrets(env={})).scrub(super().__str__())

    def known_secrets(self, env: Mapping[str, str] | None = None) -> list[str]:
        """Every secret value these settings (and the clients' own variables in ``env``) hold: the secret settings,
        the passwords and secret parameters of every URL, ``MLFLOW_TRACKING_PASSWORD`` and the like. Error
        messages and log lines are searched for these (a driver may echo its DSN)."""
        env = os.environ if env is None else env
        found: list[str] = []

        def walk(value: Any, name: str = "") -> None:
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                for field in type(value).model_fields:
                    walk(getattr(value, field), field)
            elif isinstance(value, dict):
                for key, item in value.items():
                    walk(item, str(key))
            elif isinstance(value, str):
                if _SECRET_SETTING.search(name):
                    found.append(value)
                for item in value.split(",") if name == "bootstrap_servers" else (value,):
                    found.extend(url_secrets(item.strip()))

        walk(self)
        found.extend(env[name] for name in CLIENT_SECRET_VARIABLES if env.get(name))
        return list(dict.fromkeys(found))


# Variables that MLflow, libpq, the cloud SDKs and Hugging Face read credentials from.
CLIENT_SECRET_VARIABLES = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "DATABRICKS_TOKEN",
    "DATABRICKS_CLIENT_SECRET",
    "PGPASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CLIENT_SECRET",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
)
# Names of free-form settings (trainer overrides) whose string value is a secret. Stricter than the URL rule:
# max_tokens and tokenizer are not secrets.
_SECRET_SETTING = re.compile(r"pass(word|wd|phrase)|secret|(^|_)token$|api_?key|credential|private_key", re.I)


def _masked(name: str, value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _masked(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(name, v) for v in value]
    if not isinstance(value, str):
        return value
    if _SECRET_SETTING.search(name):
        return MASK
    if name == "bootstrap_servers":
        return mask_url_list(value)
    return mask_url(value) if "://" in value or "@" in value else value


_SECTIONS = tuple(Settings.model_fields)


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == "ALIGND_CONFIG" or name.startswith("ALIGND_TEST_"):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, field = rest.partition("_")
        if section not in _SECTIONS or not field:
            raise ConfigurationError(
                f"{name}: not a setting alignd knows; settings are ALIGND_<SECTION>_<NAME> with SECTION one of "
                f"{', '.join(s.upper() for s in _SECTIONS)}"
            )
        plain = field.removesuffix("_file")
        if plain != field and _is_setting(section, plain) and not _is_setting(section, field):
            if not value:  # empty: unset, as for the setting itself
                continue
            field, value = plain, _setting_from_file(name, value, env)
        overrides.setdefault(section, {})[field] = value
    return overrides


def _is_setting(section: str, field: str) -> bool:
    model = Settings.model_fields[section].annotation
    return isinstance(model, type) and issubclass(model, BaseModel) and field in model.model_fields


def _setting_from_file(name: str, path: str, env: Mapping[str, str]) -> str:
    """The value ``name`` (ALIGND_<SECTION>_<NAME>_FILE) points at: the file's text without its trailing newline."""
    plain = name[: -len("_FILE")]
    if plain in env:
        raise ConfigurationError(f"{plain} and {name} are both set; keep one (the value, or the file that holds it)")
    try:
        value = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigurationError(f"{name}: {path!r} is not UTF-8 text") from None
    except OSError as exc:
        raise ConfigurationError(f"{name}: cannot read {path!r}: {exc.strerror or exc}") from None
    if not value:
        raise ConfigurationError(f"{name}: {path!r} is empty")
    return value


def _env_name(loc: tuple[Any, ...]) -> str:
    name = ENV_PREFIX + "_".join(str(part) for part in loc[:2]).upper()
    return name if len(loc) > 1 else name + "_*"


def load_settings(config_file: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the YAML file (``config_file`` or ``$ALIGND_CONFIG``) and the environment.

    Raises:
        ConfigurationError: naming each wrong setting, its variable, and what is expected.
    """
    env = os.environ if env is None else env
    config_file = config_file or env.get("ALIGND_CONFIG")
    data: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigurationError(f"config file {str(path)!r} does not exist (from --config or ALIGND_CONFIG)")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigurationError(f"config file {path} must be a mapping of sections (database:, kafka:, ...)")
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in loaded.items()}
    for section, values in _env_overrides(env).items():
        current = data.get(section)
        data[section] = {**(current if isinstance(current, dict) else {}), **values}
    try:
        return Settings.model_validate(_coerce_env_strings(data))
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            where = ".".join(str(p) for p in loc) or "settings"
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown setting"
            problems.append(f"{where} ({_env_name(loc)}): {message}")
        raise ConfigurationError("invalid settings: " + "; ".join(problems)) from None


def _coerce_env_strings(data: dict[str, Any]) -> dict[str, Any]:
    # Environment values are strings; pydantic's lax mode converts "5000" and "true" for us, but an empty
    # string means "unset" for optional settings.
    return {
        section: {k: (None if v == "" else v) for k, v in values.items()} if isinstance(values, dict) else values
        for section, values in data.items()
    }
