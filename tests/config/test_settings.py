from __future__ import annotations

import os
import secrets
import subprocess
import sys

from tests.conftest import BASE_DIR, database_url_for_subprocesses


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {key: value for key, value in os.environ.items() if key not in {"DEBUG", "SECRET_KEY"}}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=BASE_DIR,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_deploy_check_passes_with_production_settings(db):
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="api.example.com",
        DATABASE_URL=database_url_for_subprocesses(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_secret_key(db):
    result = manage("check", DEBUG="0", DATABASE_URL=database_url_for_subprocesses())
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_production_refuses_to_start_without_redis_url(db):
    result = manage(
        "check",
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(50),
        DATABASE_URL=database_url_for_subprocesses(),
        REDIS_URL="",
    )
    assert result.returncode != 0
    assert "REDIS_URL must be set" in result.stderr
