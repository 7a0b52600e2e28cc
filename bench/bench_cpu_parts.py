"""CPU of each part of a gateway request, in one warm process: what the chat path spends where, next
to the bare cost of the same work without our libraries around it.

Each row is the calling thread's CPU time per call (`time.thread_time`, so waits on Redis, PostgreSQL
and the upstream are left out), the minimum over several rounds: this VM's speed drifts, and the
fastest round is the one least disturbed. The fake upstream runs in this process on its own threads;
its CPU is not counted.

    make bench B=bench/bench_cpu_parts.py
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from harness import machine_line, write_section

CALLS = int(os.environ.get("BENCH_CALLS", "300"))
ROUNDS = 7


def cpu_us(call: Callable[[], object], calls: int = CALLS) -> float:
    """Microseconds of this thread's CPU per call, the minimum over ROUNDS rounds."""
    for _ in range(max(calls // 10, 20)):
        call()
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.thread_time()
        for _ in range(calls):
            call()
        best = min(best, (time.thread_time() - started) / calls * 1e6)
    return best


def wsgi_caller(path: str, method: str = "GET", body: bytes = b"", headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """A call of Django's WSGI application as gunicorn makes it, without gunicorn."""
    from django.core.handlers.wsgi import WSGIHandler

    application = WSGIHandler()
    extra = {}
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        extra[key if key == "CONTENT_TYPE" else f"HTTP_{key}"] = value

    def call() -> None:
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "127.0.0.1",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            **extra,
        }
        statuses: list[str] = []

        def start_response(status: str, _headers: Any, exc_info: Any = None) -> Callable[[bytes], object]:
            statuses.append(status)
            return lambda _data: None

        response = application(environ, start_response)
        b"".join(response)
        response.close()
        assert statuses[0].startswith("200"), statuses

    return call


def main() -> None:
    os.environ.update({"DEBUG": "0", "ALLOWED_HOSTS": "127.0.0.1", "SECURE_SSL_REDIRECT": "0"})
    os.environ.setdefault("SECRET_KEY", uuid.uuid4().hex * 2)
    from bench_gateway import gateway_bench

    bench = gateway_bench()
    from django.db import connection
    from django_redis import get_redis_connection

    from billing.services import budget_reserve, budget_settle
    from chat.providers import OpenAIProvider, ProviderRequest
    from chat.services import ChatParams, chat_complete
    from tenants.background import background
    from tenants.ratelimits import token_rate_adjusting, token_rate_reserve
    from tenants.services import api_key_authenticate

    tenant, upstream = bench.tenant, bench.upstream
    raw_key = bench.gateway_headers["Authorization"].split()[1]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 256}
    raw_body = json.dumps(body).encode()
    plain = http.client.HTTPConnection("127.0.0.1", upstream.port)

    def upstream_over_http_client() -> None:
        plain.request(
            "POST", "/v1/chat/completions", body=raw_body, headers={"Content-Type": "application/json"}
        )
        json.loads(plain.getresponse().read())

    provider = OpenAIProvider()
    provider_request = ProviderRequest("gpt-4o-mini", messages, 256, None, None)
    redis = get_redis_connection("default")
    ping = socket.create_connection(("127.0.0.1", redis.connection_pool.connection_kwargs.get("port", 6379)))
    ping.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def redis_over_a_socket() -> None:
        ping.sendall(b"*1\r\n$4\r\nPING\r\n")
        ping.recv(64)

    def reserve_and_settle() -> None:
        handle = budget_reserve(
            tenant=tenant,
            request_id=uuid.uuid4().hex,
            provider="openai",
            model="gpt-4o-mini",
            prompt_tokens=20,
            max_tokens=256,
        )
        budget_settle(handle=handle, input_tokens=10, cached_input_tokens=0, output_tokens=10)

    def token_reserve_and_correct() -> None:
        reservation = token_rate_reserve(tenant=tenant, tokens=276)
        with token_rate_adjusting(tenant=tenant, reservation=reservation, used=20):
            pass

    def select_one() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()

    def pipeline() -> None:
        params = ChatParams(
            endpoint="openai", messages=messages, message=messages[0]["content"], model="gpt-4o-mini"
        )
        chat_complete(tenant=tenant, params=params)

    rows = [
        ("the upstream over http.client (no SDK)", cpu_us(upstream_over_http_client)),
        (
            "the same call through the openai SDK (`OpenAIProvider.complete`)",
            cpu_us(lambda: provider.complete(provider_request)),
        ),
        ("a Redis PING over a bare socket", cpu_us(redis_over_a_socket, CALLS * 5)),
        ("a Redis GET through redis-py", cpu_us(lambda: redis.get("bench:missing"), CALLS * 5)),
        (
            "API-key authentication (one cached lookup in Redis)",
            cpu_us(lambda: api_key_authenticate(raw_key=raw_key), CALLS * 3),
        ),
        (
            "tokens-per-minute reserve and correction (2 Redis scripts)",
            cpu_us(token_reserve_and_correct, CALLS * 3),
        ),
        ("a SELECT 1 through Django", cpu_us(select_one, CALLS * 3)),
        ("budget reserve and settle (2 statements)", cpu_us(reserve_and_settle)),
        ("the whole pipeline (`chat_complete`, trace queued)", cpu_us(pipeline)),
        ("Django + DRF: /health/live as a WSGI call", cpu_us(wsgi_caller("/health/live"), CALLS * 3)),
        (
            "a whole /v1/chat/completions as a WSGI call",
            cpu_us(wsgi_caller("/v1/chat/completions", "POST", bench.body, bench.gateway_headers)),
        ),
    ]
    background.flush()
    upstream.close()
    lines = [
        "## CPU per part of a gateway request (`bench/bench_cpu_parts.py`)",
        "",
        f"{machine_line()}; one warm process, DEBUG off; this thread's CPU per call (waits left out), "
        f"the minimum of {ROUNDS} rounds; zero-delay fake OpenAI upstream in the same process (its CPU "
        "not counted). The trace of a pipeline call is written by the background thread, not counted "
        "either. Through gunicorn a request costs more than as a WSGI call: its HTTP parsing, the hand-"
        "off between its threads, the trace write (`bench/bench_gateway.py` counts all of it).",
        "",
        "| part | CPU µs per call |",
        "|---|---|",
        *[f"| {name} | {value:.0f} |" for name, value in rows],
    ]
    report = "\n".join(lines)
    print(report)
    write_section("cpu_parts", report)


if __name__ == "__main__":
    main()
