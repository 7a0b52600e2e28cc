"""Gateway overhead: POST /v1/chat/completions through the gateway (gunicorn as `make run` runs it)
against the same request sent straight to a zero-delay fake OpenAI upstream, at concurrency 1 and
16; database statements per chat request; streaming time to first token, gateway minus upstream.

    make bench B=bench/bench_gateway.py
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness import (
    BASE_DIR,
    LoadResult,
    base_interpreter,
    gunicorn,
    idle_round_trip_us,
    load,
    machine_line,
    reference_loop_ms,
    server_cpu_seconds,
    setup_django,
    time_to_first_token,
    write_section,
)

if TYPE_CHECKING:
    from datetime import datetime

    from tenants.models import Tenant

SECONDS = float(os.environ.get("BENCH_SECONDS", "6"))
ROUNDS = 3  # direct and gateway measured in alternation, so a machine that speeds up or slows down
# (this VM does, by a third from one minute to the next) biases neither side
TTFT_REQUESTS = 200
PACED_TOKEN_SECONDS = 0.02  # a model generating 50 tokens/s
PACED_REQUESTS = 30
PACED_ANSWER = " ".join(["Paris is the capital of France, on the Seine."] * 4)


@dataclass(frozen=True)
class GatewayBench:
    """A zero-delay fake OpenAI upstream, the environment pointing a gateway at it, the bench tenant,
    and the non-streaming and streaming requests with the headers for each side."""

    upstream: Any  # tests.fake_llm.FakeLLMServer, importable once BASE_DIR is on the path
    env: dict[str, str]
    tenant: Tenant
    body: bytes
    stream_body: bytes
    json_headers: dict[str, str]
    gateway_headers: dict[str, str]


def gateway_bench() -> GatewayBench:
    """Starts the upstream, sets its environment for this process too, and sets Django up."""
    sys.path.insert(0, str(BASE_DIR))
    from tests.fake_llm import FakeLLMServer

    upstream = FakeLLMServer("openai")
    env = {
        "OPENAI_BASE_URL": upstream.base_url,
        "OPENAI_API_KEY": "bench-key",
        "CHAT_DEFAULT_FALLBACK_CHAIN": "openai:gpt-4o-mini",
    }
    os.environ.update(env)
    setup_django()
    tenant, raw_key = bench_tenant_key()
    request = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }
    json_headers = {"Content-Type": "application/json"}
    return GatewayBench(
        upstream,
        env,
        tenant,
        json.dumps(request).encode(),
        json.dumps({**request, "stream": True}).encode(),
        json_headers,
        {**json_headers, "Authorization": f"Bearer {raw_key}"},
    )


def bench_tenant_key() -> tuple[Tenant, str]:
    from billing.services import budget_update
    from tenants.models import Scope, Tenant
    from tenants.services import api_key_create, tenant_create

    tenant = Tenant.objects.filter(slug="bench-gateway").first() or tenant_create(
        name="Bench gateway", slug="bench-gateway", actor="bench"
    )
    Tenant.objects.filter(pk=tenant.pk).update(
        requests_per_minute=2_000_000_000, tokens_per_minute=2_000_000_000, monthly_token_quota=None
    )
    tenant.refresh_from_db()
    budget_update(tenant=tenant, actor="bench", monthly_budget_usd=None)
    _, raw_key = api_key_create(tenant=tenant, name="bench", scopes=[Scope.CHAT], actor="bench")
    return tenant, raw_key


def statements_per_chat_request(tenant: Tenant) -> tuple[int, int]:
    """(statements, transaction round trips) of one request's own thread in the steady state, in this
    process; its trace goes to the background thread and is written there."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from chat.services import ChatParams, chat_complete
    from tenants.background import background

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    chat_complete(tenant=tenant, params=ChatParams(endpoint="bench", messages=messages))
    with CaptureQueriesContext(connection) as queries:
        chat_complete(
            tenant=tenant,
            params=ChatParams(
                endpoint="bench",
                messages=messages,
                message="What is the capital of France?",
            ),
        )
    background.flush()
    sqls = [q["sql"] for q in queries.captured_queries]
    return len([sql for sql in sqls if sql not in ("BEGIN", "COMMIT")]), len(
        [sql for sql in sqls if sql == "COMMIT"]
    )


def spans_p50(tenant: Tenant, since: datetime) -> dict[str, float]:
    """p50 milliseconds of each span of the gateway's traces since `since`, and of the traced part."""
    from monitoring.models import Span, Trace

    traces = Trace.objects.filter(tenant=tenant, created_at__gte=since, streamed=False)
    medians = {"traced": statistics.median(traces.values_list("latency_ms", flat=True))}
    spans = Span.objects.filter(trace__in=traces).values_list("name", "duration_ms")
    by_name: dict[str, list[float]] = {}
    for name, duration in spans:
        by_name.setdefault(name, []).append(duration)
    medians.update({name: statistics.median(values) for name, values in by_name.items()})
    return medians


def main() -> None:
    bench = gateway_bench()
    upstream, env, tenant = bench.upstream, bench.env, bench.tenant
    body, stream_body = bench.body, bench.stream_body
    json_headers, gateway_headers = bench.json_headers, bench.gateway_headers
    from django.conf import settings
    from django.utils import timezone

    from chat.services import chat_settings_update

    statements, transactions = statements_per_chat_request(tenant)
    rows = []
    calibration_before = reference_loop_ms()
    round_trip_before = idle_round_trip_us()
    with gunicorn(env) as port:
        load(
            port, "/v1/chat/completions", concurrency=2, seconds=1, headers=gateway_headers, body=body
        )  # warm up
        for concurrency in (1, 16):
            cell_started = timezone.now()
            directs, throughs = [], []
            cpu_seconds = 0.0
            for _ in range(ROUNDS):
                directs.append(
                    load(
                        upstream.port,
                        "/v1/chat/completions",
                        concurrency=concurrency,
                        seconds=SECONDS / ROUNDS,
                        headers=json_headers,
                        body=body,
                    )
                )
                cpu_before = server_cpu_seconds(port)
                throughs.append(
                    load(
                        port,
                        "/v1/chat/completions",
                        concurrency=concurrency,
                        seconds=SECONDS / ROUNDS,
                        headers=gateway_headers,
                        body=body,
                    )
                )
                cpu_seconds += server_cpu_seconds(port) - cpu_before
            direct, through = LoadResult.merged(directs), LoadResult.merged(throughs)
            assert set(through.statuses) == {200}, through.statuses
            rows.append((concurrency, direct, through, cpu_seconds * 1000 / through.requests))
            if concurrency == 1:
                inside = spans_p50(tenant, cell_started)
        direct_ttft = time_to_first_token(
            upstream.port,
            "/v1/chat/completions",
            body=stream_body,
            headers=json_headers,
            requests=TTFT_REQUESTS,
            marker=b"Paris",
        )
        gateway_ttft = time_to_first_token(
            port,
            "/v1/chat/completions",
            body=stream_body,
            headers=gateway_headers,
            requests=TTFT_REQUESTS,
            marker=b"Paris",
        )
        upstream.answer, upstream.token_interval_seconds = PACED_ANSWER, PACED_TOKEN_SECONDS
        paced = {}
        for redaction, categories in (("on", ["secret", "card", "email", "phone"]), ("off", [])):
            chat_settings_update(tenant=tenant, actor="bench", redact_output=categories)
            time.sleep(settings.PROMPT_CACHE_CHECK_SECONDS + 0.5)  # every worker sees the change
            paced[redaction] = statistics.median(
                time_to_first_token(
                    port,
                    "/v1/chat/completions",
                    body=stream_body,
                    headers=gateway_headers,
                    requests=PACED_REQUESTS,
                    marker=b"Paris",
                )
            )
        paced_direct = statistics.median(
            time_to_first_token(
                upstream.port,
                "/v1/chat/completions",
                body=stream_body,
                headers=json_headers,
                requests=PACED_REQUESTS,
                marker=b"Paris",
            )
        )
        chat_settings_update(tenant=tenant, actor="bench", redact_output=["secret", "card", "email", "phone"])
    upstream.close()
    direct_p50, gateway_p50 = statistics.median(direct_ttft), statistics.median(gateway_ttft)
    calibration_after = reference_loop_ms()
    round_trip_after = idle_round_trip_us()
    lines = [
        "## Gateway overhead (`bench/bench_gateway.py`)",
        "",
        f"{machine_line()}; gunicorn as `make run` configures it; zero-delay fake OpenAI upstream "
        "(a Python HTTP server on the same 2 cores); non-streaming POST /v1/chat/completions, "
        f"{SECONDS:.0f} s per cell in {ROUNDS} alternating rounds; every gateway request runs auth, "
        "rate limits, guards, budget reserve/settle and ledger, and queues its trace. "
        f"Interpreter: `{base_interpreter()}`. Machine speed before / after: "
        f"{calibration_before:.0f} / {calibration_after:.0f} ms for the reference Python loop "
        f"(`harness.reference_loop_ms`), {round_trip_before:.0f} / {round_trip_after:.0f} µs for a round "
        "trip to Redis after 3 ms idle (`harness.idle_round_trip_us`); lower is faster, compare runs "
        "by both: this VM's round trips vary by 2x from hour to hour.",
        "",
        "| concurrency | upstream direct p50 / p99 ms | through gateway p50 / p99 ms | overhead p50 / p99 ms "
        "| gateway req/s | gateway CPU ms per request |",
        "|---|---|---|---|---|---|",
        *[
            f"| {c} | {d.p50:.2f} / {d.p99:.2f} | {g.p50:.2f} / {g.p99:.2f} "
            f"| {g.p50 - d.p50:.2f} / {g.p99 - d.p99:.2f} | {g.rps:.0f} | {cpu:.2f} |"
            for c, d, g, cpu in rows
        ],
        "",
        "Gateway CPU is what gunicorn's processes used per request (`harness.server_cpu_seconds`), its "
        "background thread's trace writes included. At concurrency 1 it is most of the overhead: the "
        "gateway's latency there is its own CPU more than its waits on Redis and PostgreSQL.",
        "",
        f"Database statements per chat request (steady state): **{statements}** on the request's thread "
        f"(reserve, settle; {transactions} explicit transactions: each statement commits on its own), "
        "plus its trace, written after the response by the background thread in one statement with "
        "the other traces queued meanwhile (target: at most 6 statements).",
        "",
        "Where the time goes at concurrency 1 (p50 of the gateway's own trace spans, ms): "
        f"reserve {inside['reserve']:.2f}, provider call through the SDK {inside['provider']:.2f} "
        f"(the upstream alone: {rows[0][1].p50:.2f}), settle {inside['settle']:.2f}; "
        f"{inside['traced']:.2f} from the start of the pipeline to its end. The rest is "
        "authentication and rate limits (Redis), request parsing, the response, Django's middleware "
        "and gunicorn.",
        "",
        f"Streaming time to first token over {TTFT_REQUESTS} requests, p50: upstream {direct_p50:.2f} ms, "
        f"through the gateway {gateway_p50:.2f} ms, overhead **{gateway_p50 - direct_p50:.2f} ms** "
        "(target: at most 5 ms).",
        "",
        f"With an upstream that paces its tokens ({PACED_TOKEN_SECONDS * 1000:.0f} ms apart, "
        f"{PACED_REQUESTS} requests), time to first token p50: upstream {paced_direct:.1f} ms, through "
        f"the gateway with output redaction on {paced['on']:.1f} ms, off {paced['off']:.1f} ms. With "
        "redaction on, a word goes out when the next one starts (it might still become an e-mail "
        "address or a key), so one token interval is the price of redacting a stream.",
    ]
    report = "\n".join(lines)
    print(report)
    write_section("gateway", report)


if __name__ == "__main__":
    main()
