"""CPU the Prometheus metrics add to one chat request: what monitoring/metrics.py is asked to do for a
request that missed the exact cache and was answered by its first provider in one attempt (counts,
tokens, cost, latency and time to first token, the attempt, the cache miss), in multiprocess mode as
gunicorn runs it (every value an mmap'd file) and in one process, without and with the tenant label.
Each mode runs in a fresh interpreter: the mode and the label are fixed when the metrics are made.

The thread's CPU per request (`time.thread_time`), the minimum over several rounds; compare it with
the gateway's server CPU per request (bench/bench_gateway_compare.py, a few milliseconds).

    make bench B=bench/bench_metrics.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from harness import BASE_DIR, machine_line, setup_django, write_section

CALLS = 20_000
ROUNDS = 7
ROW = {
    "status": "ok",
    "provider": "openai",
    "model": "gpt-4o-mini",
    "latency_ms": 412.0,
    "time_to_first_token_ms": 120.0,
    "input_tokens": 25,
    "cached_input_tokens": 5,
    "output_tokens": 8,
    "cost_nanos": 8925,
}


def cpu_us(call: Callable[[], None]) -> float:
    for _ in range(CALLS // 10):
        call()
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.thread_time()
        for _ in range(CALLS):
            call()
        best = min(best, (time.thread_time() - started) / CALLS * 1e6)
    return best


def measure() -> dict[str, float]:
    """Microseconds of CPU per request: all its metrics, and the one count this request gains from
    issue 17's metrics (its cache lookup), in this process as its environment configures it."""
    setup_django()
    from monitoring.metrics import ATTEMPTS, CACHE_MISSES, request_observe
    from tenants.models import Tenant

    tenant = Tenant(name="Bench", slug="bench")

    def one_request() -> None:
        CACHE_MISSES.labels(kind="exact").inc()
        ATTEMPTS.labels(provider="openai", model="gpt-4o-mini", outcome="ok").inc()
        request_observe(tenant=tenant, endpoint="openai", row=ROW)

    def cache_lookup() -> None:
        CACHE_MISSES.labels(kind="exact").inc()

    return {"all": cpu_us(one_request), "added": cpu_us(cache_lookup)}


def in_fresh_process(env: dict[str, str]) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--measure"],
        env={**os.environ, **env},
        cwd=BASE_DIR,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {key: float(value) for key, value in json.loads(output.splitlines()[-1]).items()}


def main() -> None:
    rows = []
    for label, tenant_label in [("multiprocess (gunicorn)", "0"), ("multiprocess, tenant label", "1")]:
        with tempfile.TemporaryDirectory(prefix="bench-metrics-") as directory:
            env = {"PROMETHEUS_MULTIPROC_DIR": directory, "METRICS_TENANT_LABEL": tenant_label}
            rows.append((label, in_fresh_process(env)))
    single = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    single["METRICS_TENANT_LABEL"] = "0"
    rows.append(("one process", in_fresh_process(single)))
    lines = [
        "## CPU of a request's metrics (`bench/bench_metrics.py`)",
        "",
        f"{machine_line()}; the metrics of one chat request answered by its first provider "
        f"(7 counter increments, 2 histogram observations), thread CPU, best of {ROUNDS} rounds of "
        f"{CALLS} requests.",
        "",
        "| mode | µs per request, all metrics | of which the new cache count |",
        "|---|---|---|",
        *[f"| {label} | {us['all']:.1f} | {us['added']:.1f} |" for label, us in rows],
    ]
    report = "\n".join(lines)
    print(report)
    write_section("metrics", report)


if __name__ == "__main__":
    if sys.argv[1:] == ["--measure"]:
        print(json.dumps(measure()))
    else:
        main()
