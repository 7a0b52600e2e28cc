"""Logs: one JSON object per line in production, naming the request, tenant and trace each line
belongs to; plain text in development; API keys never written."""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import subprocess
import sys
import threading

import pytest

from config.logs import JsonFormatter, PlainFormatter, RequestContextFilter, log_context
from tests.chat.conftest import _chat_state  # noqa: F401  (autouse: seed prices, fresh caches)
from tests.config.test_settings import manage
from tests.conftest import BASE_DIR, client_with_key
from tests.fake_llm import FakeLLMServer

PROVIDER_KEY = "sk-proj-" + "Q" * 40


@pytest.fixture
def captured():
    """The production handler (JSON, the request context) on the root logger, writing to a buffer."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


@pytest.fixture
def openai_server(settings):
    server = FakeLLMServer("openai")
    settings.OPENAI_BASE_URL = server.base_url
    settings.OPENAI_API_KEY = PROVIDER_KEY
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = ["openai:gpt-4o-mini"]
    yield server
    server.close()


def test_a_requests_lines_carry_its_id_tenant_and_trace(tenant, make_key, openai_server, captured):
    # A provider reporting more usage than reserved: the settle step logs a warning, after the key is
    # authenticated and the trace started.
    openai_server.usage = (100_000, 0, 100_000)
    raw_key = make_key(tenant, scopes=["chat"])[1]
    response = client_with_key(raw_key).post(
        "/api/v1/chat",
        {"message": "What is the capital of France?"},
        format="json",
        HTTP_X_REQUEST_ID="req-42",
    )
    assert response.status_code == 200, response.content
    assert response["X-Request-ID"] == "req-42"
    text = captured.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    warning = next(line for line in lines if "beyond the reserved bound" in line["message"])
    assert {key: warning[key] for key in ("level", "logger", "request_id", "tenant", "trace_id")} == {
        "level": "WARNING",
        "logger": "chat.services",
        "request_id": "req-42",
        "tenant": tenant.slug,
        "trace_id": response.json()["trace_id"],
    }
    assert "time" in warning
    assert all(line.get("request_id") == "req-42" for line in lines)
    assert raw_key not in text
    assert PROVIDER_KEY not in text
    # The context ends with the response: the thread's next lines belong to no request.
    assert log_context() == {}


def test_a_request_without_a_plausible_id_gets_one(api_client):
    sent = api_client.get("/api/v1/me", HTTP_X_REQUEST_ID="no spaces or\nnewlines allowed")
    generated = api_client.get("/api/v1/me")
    assert sent["X-Request-ID"] != "no spaces or\nnewlines allowed"
    assert len(sent["X-Request-ID"]) == 32
    assert generated["X-Request-ID"] not in {"", sent["X-Request-ID"]}


@pytest.mark.parametrize("formatter", [JsonFormatter(), PlainFormatter("%(message)s")])
def test_secrets_in_a_message_or_traceback_are_redacted(formatter):
    raw_key = f"tk_abc123_{secrets.token_urlsafe(32)}"
    try:
        raise ValueError(f"bad key {raw_key}")
    except ValueError as exc:
        record = logging.LogRecord(
            "probe", logging.ERROR, __file__, 1, "auth %s with %s", (raw_key, f"Bearer {PROVIDER_KEY}"), None
        )
        record.exc_info = (type(exc), exc, exc.__traceback__)
    text = formatter.format(record)
    assert raw_key not in text
    assert PROVIDER_KEY not in text
    assert "tk_abc123_[redacted]" in text


def test_production_settings_log_json_and_development_plain_text():
    probe = "import logging; logging.getLogger('probe').warning('one line\\nper event')"
    production = manage("shell", "-c", probe, DEBUG="0", SECRET_KEY=secrets.token_urlsafe(50))
    assert production.returncode == 0, production.stderr
    line = production.stderr.strip().splitlines()[-1]
    assert json.loads(line) == {
        **json.loads(line),
        "level": "WARNING",
        "logger": "probe",
        "message": "one line\nper event",
    }
    development = manage("shell", "-c", probe, DEBUG="1")
    assert development.returncode == 0, development.stderr
    assert development.stderr.strip().endswith("WARNING probe one line\nper event")


def test_the_celery_worker_logs_json_in_production(settings):
    """Celery does not take over the root logger with its own text format."""
    env = {key: value for key, value in os.environ.items() if key not in {"DEBUG", "DATABASE_URL"}}
    env.update(DEBUG="0", SECRET_KEY=secrets.token_urlsafe(50), REDIS_URL=settings.REDIS_URL)
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--loglevel",
            "INFO",
            "--concurrency",
            "1",
        ],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # A worker that never logs "ready." is ended after a while, and the loop with it.
    watchdog = threading.Timer(120, worker.kill)
    watchdog.start()
    try:
        lines: list[str] = []
        for line in worker.stderr:
            lines.append(line)
            if "ready." in line:
                break
    finally:
        watchdog.cancel()
        worker.terminate()
        worker.wait(30)
    assert lines, "the worker logged nothing"
    ready = json.loads(lines[-1])
    assert (ready["logger"], ready["level"]) == ("celery.apps.worker", "INFO")
    assert ready["message"].endswith("ready.")
