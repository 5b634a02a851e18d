"""docker-compose.yml and the Dockerfile match the project: every command they
run exists here, and every variable they set is one slidefarm reads. (No
Docker engine runs on the test machines, so the files are checked, not run.)"""

from __future__ import annotations

import shlex
import tomllib
from pathlib import Path
from typing import Any

import yaml

from core.config import Settings
from tests.support import ROOT

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
#: Variables the official images read, not slidefarm.
IMAGE_VARIABLES = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def settings_variables() -> set[str]:
    return {str(field.validation_alias) for field in Settings.model_fields.values()}


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def test_every_service_variable_is_one_slidefarm_reads() -> None:
    known = settings_variables() | IMAGE_VARIABLES
    for name, service in compose()["services"].items():
        env = service.get("environment") or {}
        names = set(env) if isinstance(env, dict) else {e.split("=", 1)[0] for e in env}
        assert names <= known, f"{name}: unknown variables {sorted(names - known)}"


def test_every_command_exists_in_the_project() -> None:
    services = compose()["services"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for name in ("migrate", "api", "worker", "flower"):
        argv = command_of(services[name])
        assert argv, name
        if argv[0] == "alembic":
            assert argv[1:] == ["upgrade", "head"] and (ROOT / "alembic.ini").exists()
        elif argv[0] == "gunicorn":
            assert argv[-1] == "api:create_app()"
        elif argv[0] == "celery":
            assert argv[1:3] == ["-A", "workers"] and argv[3] in ("worker", "flower")
        else:
            assert argv[0] in scripts, f"{name}: {argv[0]} is not a command of the project"


def test_the_deployment_has_the_shape_the_design_needs() -> None:
    services = compose()["services"]
    assert {"postgres", "redis", "migrate", "api", "worker", "flower"} <= set(services)
    assert "--appendonly" in command_of(services["redis"])  # queued messages survive restarts
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=N
    outputs = {v.split(":")[1] for v in worker["volumes"]}
    assert outputs == {v.split(":")[1] for v in services["api"]["volumes"]}  # shared output
    assert worker["environment"]["SLIDEFARM_OUTPUT_DIR"] in outputs
    assert "readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        assert (
            services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        )
    assert any(v.startswith("pgdata:") for v in services["postgres"]["volumes"])


def test_the_dockerfile_installs_from_pyproject() -> None:
    text = DOCKERFILE.read_text()
    assert "COPY pyproject.toml" in text and "pip install" in text
    for path in (
        "api",
        "workers",
        "storage",
        "core",
        "migrations",
        "alembic.ini",
        "celeryconfig.py",
        "gunicornconf.py",
    ):
        assert path in text, path
    for package in ("api", "workers", "storage", "core", "migrations"):
        assert f"COPY {package} ./{package}" in text, package
    assert all((ROOT / p).exists() for p in ("api", "workers", "storage", "core", "migrations"))
    assert Path(ROOT / "README.md").exists()


def test_redis_needs_a_password_and_flower_a_login() -> None:
    services = compose()["services"]
    redis = services["redis"]
    assert "--requirepass" in command_of(redis) and "ports" not in redis
    env = services["worker"]["environment"]
    for name in ("CELERY_BROKER_URL", "REDIS_URL"):
        assert env[name].startswith("redis://:${REDIS_PASSWORD"), name
    flower = command_of(services["flower"])
    assert any(arg.startswith("--basic-auth=") for arg in flower)
    assert all(port.startswith("127.0.0.1:") for port in services["flower"]["ports"])


def test_the_api_is_served_to_drain() -> None:
    # gunicornconf's hooks drain a stopping API (README, "Deploying without
    # downtime"); the container runtime must wait longer than gunicorn does.
    import gunicornconf

    api = compose()["services"]["api"]
    argv = command_of(api)
    assert argv[argv.index("-c") + 1] == "python:gunicornconf"
    assert '"-c", "python:gunicornconf"' in DOCKERFILE.read_text()
    grace = int(str(api["stop_grace_period"]).rstrip("s"))
    assert grace > gunicornconf.graceful_timeout
