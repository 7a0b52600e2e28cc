"""Shared fixtures: tenants, keys and API clients on real PostgreSQL and Redis; a real gunicorn."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from chat.circuit import circuit_readings_forget
from tenants.models import ApiKey, Scope, Tenant
from tenants.services import api_key_create, tenant_create

BASE_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_redis() -> None:
    """Tests own Redis database TEST_REDIS_DB (see config/devserver.py); start each test empty,
    without readings of it kept in this process."""
    cache.clear()
    circuit_readings_forget()


@pytest.fixture(autouse=True)
def _background_inline(settings: Any) -> None:
    """After-response jobs (traces, token corrections) run in the test's own thread: another thread's
    connection cannot see the test's transaction. Tests of the background thread turn this off."""
    settings.BACKGROUND_INLINE = True


@pytest.fixture
def tenant(db: None) -> Tenant:
    return tenant_create(name="Acme", slug="acme", actor="test")


@pytest.fixture
def other_tenant(db: None) -> Tenant:
    return tenant_create(name="Globex", slug="globex", actor="test")


KeyFactory = Callable[..., tuple[ApiKey, str]]


@pytest.fixture
def make_key(db: None) -> KeyFactory:
    def make(tenant: Tenant, scopes: list[str] | None = None, **kwargs: Any) -> tuple[ApiKey, str]:
        return api_key_create(
            tenant=tenant,
            name=str(kwargs.pop("name", "test key")),
            scopes=scopes or [Scope.ADMIN],
            actor="test",
            **kwargs,
        )

    return make


def expire_now(api_key: ApiKey) -> None:
    """Moves a key's expiry into the past through save(), as an operator's edit would."""
    api_key.refresh_from_db()
    api_key.expires_at = timezone.now() - timedelta(seconds=1)
    api_key.save(update_fields=["expires_at"])


def start_of_fresh_token_window(tenant: Tenant) -> None:
    """Waits out a tokens-per-minute window that ends within 5 s, so what a test reserves and what
    it reads back are counted in the same minute."""
    from tenants.ratelimits import tokens_this_minute

    reset = tokens_this_minute(tenant=tenant).reset_seconds
    if reset < 5:
        time.sleep(reset + 1)


def client_with_key(raw_key: str | None) -> APIClient:
    client = APIClient()
    if raw_key:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


@pytest.fixture
def api_client(tenant: Tenant, make_key: KeyFactory) -> APIClient:
    """A client holding an admin-scoped key of `tenant`."""
    _, raw_key = make_key(tenant)
    return client_with_key(raw_key)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url_for_subprocesses() -> str:
    """DATABASE_URL of the database pytest-django created, for processes we start ourselves."""
    db = connection.settings_dict
    host = quote(db["HOST"], safe="") if db["HOST"].startswith("/") else db["HOST"]
    port = f":{db['PORT']}" if db["PORT"] else ""
    password = f":{quote(db['PASSWORD'], safe='')}" if db["PASSWORD"] else ""
    return f"postgres://{db['USER']}{password}@{host}{port}/{db['NAME']}"


@contextmanager
def database_unreachable() -> Iterator[int]:
    """Points the default connection at a closed port on 127.0.0.1, then back: our real driver gets
    a real refused connection. Needs transactional_db (a test's transaction would not survive the
    close). Yields the port, which no response may show."""
    saved = {key: connection.settings_dict[key] for key in ("HOST", "PORT")}
    port = free_port()
    connection.close()
    connection.settings_dict.update(HOST="127.0.0.1", PORT=str(port))
    try:
        yield port
    finally:
        connection.close()
        connection.settings_dict.update(saved)


def _answers_liveness(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class GunicornServer:
    def __init__(self, port: int, process: subprocess.Popen[bytes]) -> None:
        self.port = port
        self.process = process
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
def gunicorn_server(transactional_db: None) -> Iterator[GunicornServer]:
    """The app under the same gunicorn config `make run` uses (several worker processes)."""
    with gunicorn_running() as server:
        yield server


@contextmanager
def gunicorn_running(**extra_env: str) -> Iterator[GunicornServer]:
    """gunicorn_server with more environment (PROMETHEUS_MULTIPROC_DIR, provider URLs...)."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_subprocesses(),
        "REDIS_URL": settings.REDIS_URL,
        "PORT": str(port),
        "WEB_CONCURRENCY": "3",
        "GUNICORN_ACCESS_LOG": "",
        **extra_env,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi", "--config", "config/gunicorn.conf.py"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = GunicornServer(port, process)
    # Ready when a worker answers, not when the master listens: on a loaded machine the workers
    # take many seconds to import the app, and a test's first request would wait out its timeout.
    deadline = time.monotonic() + 120
    while not _answers_liveness(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            stderr = process.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            raise RuntimeError(f"gunicorn did not start: {stderr}")
        time.sleep(0.2)
    try:
        yield server
    finally:
        process.terminate()
        try:
            process.wait(60)  # the graceful stop; a loaded machine may need long
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        connection.close()
