"""docker-compose.yml and the Dockerfile, checked without Docker: structure, and agreement with the code.

No Docker engine runs here, so these tests read the files: the compose file parses, its dependency graph is
sound, every long-running service has a healthcheck, the trainer reserves a GPU, and every ``ALIGND_*``
variable a service sets is a setting ``daemon.settings`` knows and loads; the commands the containers run
are commands ``alignd``'s parser accepts.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

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

# `alignd run [--role ingest|project|monitor|schedule|http ...]` (DESIGN.md §7).
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


def parse_dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
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
    """The ALIGND_* names that are not ALIGND_<SECTION>_<NAME> of a section and field in Settings."""
    unknown = []
    for name in sorted(names):
        if name == "ALIGND_CONFIG":
            continue
        section, _, field = name.removeprefix("ALIGND_").lower().partition("_")
        model = Settings.model_fields.get(section)
        if model is None or model.annotation is None or field not in model.annotation.model_fields:
            unknown.append(name)
    return unknown


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
    assert {"kafka", "postgres", "mlflow", "alignd", "trainer", "migrate"} <= set(SERVICES)
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


def test_trainer_reserves_a_gpu_and_trains_on_it() -> None:
    trainer = SERVICES["trainer"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert gpus, "the trainer reserves no NVIDIA GPU"
    env = environment(trainer)
    assert env["ALIGND_TRAINERS_DEVICE"] == "cuda"
    assert int(env.get("ALIGND_TRAINERS_NPROC", "1")) == int(gpus[0]["count"]), "one training process per GPU"
    assert environment(SERVICES["alignd"])["ALIGND_TRAINERS_DEVICE"] == "cpu"


ALIGND_SERVICES = sorted(name for name, s in SERVICES.items() if any(k.startswith("ALIGND_") for k in environment(s)))


@pytest.mark.parametrize("name", ALIGND_SERVICES)
def test_service_settings_are_settings_alignd_reads(name: str) -> None:
    env = environment(SERVICES[name])
    unknown = unknown_settings({k for k in env if k.startswith("ALIGND_")})
    assert not unknown, explain_unknown(unknown, f"service {name}")
    try:
        settings = load_settings(None, env=env)
    except ConfigurationError as exc:
        pytest.fail(f"service {name}: its settings do not load: {exc}")
    assert settings.database.url.startswith("postgresql+psycopg://")


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
    pytest.fail(f"{where}: `alignd {' '.join(argv)}` is not a command daemon/cli.py knows: {stderr.getvalue().strip()}")


def test_image_runs_the_alignd_console_script() -> None:
    assert dockerfile_exec_form("ENTRYPOINT") == ["alignd"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["alignd"] == "daemon.cli:main"


@pytest.mark.parametrize("name", sorted(n for n in SERVICES if alignd_command(n) is not None) + ["<Dockerfile CMD>"])
def test_commands_are_alignd_commands(name: str) -> None:
    argv = dockerfile_exec_form("CMD") if name == "<Dockerfile CMD>" else alignd_command(name)
    assert argv is not None
    assert_parses(argv, name)


def test_every_role_runs_once() -> None:
    roles: dict[str, list[str]] = {}
    for name in SERVICES:
        argv = alignd_command(name)
        if argv and argv[0] == "run":
            for flag, value in zip(argv, argv[1:], strict=False):
                if flag == "--role":
                    roles.setdefault(value, []).append(name)
    assert set(roles) <= ROLES, f"roles DESIGN.md §7 does not name: {sorted(set(roles) - ROLES)}"
    assert ROLES - {"http"} <= set(roles), f"roles no service runs: {sorted(ROLES - set(roles))}"
    for role, where in roles.items():
        if role != "http":  # every process serves its own /healthz
            assert len(where) == 1, f"role {role} runs in {where}"
    assert roles["schedule"] == ["trainer"], "scheduled training must run where the GPU is"


# --- agreement between the services -------------------------------------------------------------------


def test_database_urls_point_at_the_databases_the_init_script_creates() -> None:
    sql = POSTGRES_INIT.read_text(encoding="utf-8")
    alignd_url = make_url(environment(SERVICES["alignd"])["ALIGND_DATABASE_URL"])
    command = [interpolate(str(a)) for a in SERVICES["mlflow"]["command"]]
    mlflow_url = make_url(command[command.index("--backend-store-uri") + 1])
    postgres_env = environment(SERVICES["postgres"])
    for url in (alignd_url, mlflow_url):
        assert url.host == "postgres" and url.port == 5432
        assert re.search(rf"CREATE ROLE {url.username} LOGIN", sql)
        assert re.search(rf"CREATE DATABASE {url.database} OWNER {url.username}", sql)
        assert url.password in postgres_env.values(), f"{url.username}'s password is not the postgres service's"
    for variable in re.findall(r"\\getenv \w+ (\w+)", sql):
        assert variable in postgres_env, f"postgres-init.sql reads {variable}, which the postgres service lacks"


def test_kafka_is_kraft_and_serves_the_topics_alignd_uses() -> None:
    kafka = environment(SERVICES["kafka"])
    assert kafka["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{kafka['KAFKA_NODE_ID']}@")
    advertised = {listener.split("://", 1)[1] for listener in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    for name in ALIGND_SERVICES:
        assert environment(SERVICES[name])["ALIGND_KAFKA_BOOTSTRAP_SERVERS"] in advertised
    if kafka.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "true") == "false":
        created = {spec.split(":")[0] for spec in environment(SERVICES["kafka-init"])["TOPICS"].split()}
        assert set(TopicsSettings().model_dump().values()) <= created


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
    for name in ("alignd", "trainer"):
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
    build_args = SERVICES["trainer"]["build"].get("args", {})
    assert set(build_args) <= declared_args, (
        f"trainer build args the Dockerfile ignores: {set(build_args) - declared_args}"
    )


def test_dockerfile_copies_every_package() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {pattern.rstrip("*") for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    sources = {token for rest in dockerfile_args("COPY") for token in rest.split()[:-1] if not token.startswith("--")}
    assert packages <= sources, f"packages the image would lack: {sorted(packages - sources)}"
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= sources
