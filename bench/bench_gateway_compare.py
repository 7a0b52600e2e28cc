"""Gateway overhead of two (or more) commits, or settings, side by side: each commit checked out in
a temporary git worktree and served by gunicorn as `make run` configures it, with this virtualenv,
measured in alternating rounds at concurrency 1 and 16 against one zero-delay fake upstream, then
streaming time to first token the same way. This VM's speed drifts by 2x from hour to hour: the
absolute figures of two runs hardly compare, the ratio between variants measured in one run does.

    make bench B="bench/bench_gateway_compare.py f4214b9 HEAD"
    make bench B="bench/bench_gateway_compare.py HEAD HEAD:WEB_CONCURRENCY=4"    (environment, per variant)

The commits must work on the same database schema (the bench database is migrated to this one's).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench_gateway import GatewayBench, gateway_bench
from harness import (
    BASE_DIR,
    LoadResult,
    base_interpreter,
    gunicorn,
    idle_round_trip_us,
    load,
    machine_line,
    server_cpu_seconds,
    time_to_first_token,
    write_section,
)

ROUNDS = 6
SECONDS = float(os.environ.get("BENCH_SECONDS", "1.5"))  # per variant and round
THROUGHPUT_ROUNDS, THROUGHPUT_SECONDS = 2, 2.0  # at concurrency 16
TTFT_ROUNDS, TTFT_REQUESTS = 4, 40


def parse_variant(spec: str) -> tuple[str, dict[str, str]]:
    """`REV` or `REV:NAME=VALUE,NAME=VALUE` -> (revision, environment of its gunicorn)."""
    revision, _, settings = spec.partition(":")
    return revision, dict(item.split("=", 1) for item in settings.split(",") if item)


def worktree(stack: ExitStack, root: Path, revision: str) -> Path:
    """`revision` checked out under `root`, removed again when the stack closes."""
    path = root / revision.replace("/", "_")
    subprocess.run(["git", "worktree", "add", "--detach", str(path), revision], cwd=BASE_DIR, check=True)
    stack.callback(
        subprocess.run, ["git", "worktree", "remove", "--force", str(path)], cwd=BASE_DIR, check=False
    )
    return path


def gateway_load(
    variant: str, port: int, bench: GatewayBench, *, concurrency: int, seconds: float
) -> LoadResult:
    """Chat completions through one variant's gunicorn; every answer must be a 200."""
    result = load(
        port,
        "/v1/chat/completions",
        concurrency=concurrency,
        seconds=seconds,
        headers=bench.gateway_headers,
        body=bench.body,
    )
    assert set(result.statuses) == {200}, (variant, result.statuses)
    return result


def main(variants: list[str]) -> None:
    bench = gateway_bench()
    upstream, env, body, stream_body = bench.upstream, bench.env, bench.body, bench.stream_body
    json_headers, gateway_headers = bench.json_headers, bench.gateway_headers
    round_trip = idle_round_trip_us()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="gateway-compare-") as root:
        checkouts: dict[str, Path] = {}
        ports = {}
        for variant in variants:
            revision, variant_env = parse_variant(variant)
            if revision not in checkouts:
                checkouts[revision] = worktree(stack, Path(root), revision)
            ports[variant] = stack.enter_context(
                gunicorn({**env, **variant_env}, checkout=checkouts[revision])
            )
        for port in ports.values():  # warm every worker
            load(port, "/v1/chat/completions", concurrency=2, seconds=1, headers=gateway_headers, body=body)
        latencies: dict[str, list[float]] = {name: [] for name in ["direct", *variants]}
        rps: dict[str, list[float]] = {variant: [] for variant in variants}
        cpu_seconds = dict.fromkeys(variants, 0.0)
        requests = dict.fromkeys(variants, 0)
        for _ in range(ROUNDS):
            direct = load(
                upstream.port,
                "/v1/chat/completions",
                concurrency=1,
                seconds=SECONDS / 2,
                headers=json_headers,
                body=body,
            )
            latencies["direct"] += direct.latencies_ms
            for variant, port in ports.items():
                cpu_before = server_cpu_seconds(port)
                result = gateway_load(variant, port, bench, concurrency=1, seconds=SECONDS)
                cpu_seconds[variant] += server_cpu_seconds(port) - cpu_before
                requests[variant] += result.requests
                latencies[variant] += result.latencies_ms
                rps[variant].append(result.rps)
        throughput: dict[str, list[float]] = {variant: [] for variant in variants}
        for _ in range(THROUGHPUT_ROUNDS):
            for variant, port in ports.items():
                result = gateway_load(variant, port, bench, concurrency=16, seconds=THROUGHPUT_SECONDS)
                throughput[variant].append(result.rps)
        ttft: dict[str, list[float]] = {name: [] for name in ["direct", *variants]}
        for _ in range(TTFT_ROUNDS):
            for name, port, headers in [("direct", upstream.port, json_headers)] + [
                (variant, port, gateway_headers) for variant, port in ports.items()
            ]:
                ttft[name] += time_to_first_token(
                    port,
                    "/v1/chat/completions",
                    body=stream_body,
                    headers=headers,
                    requests=TTFT_REQUESTS,
                    marker=b"Paris",
                )
    upstream.close()
    direct_p50, direct_ttft = statistics.median(latencies["direct"]), statistics.median(ttft["direct"])
    overhead = {variant: statistics.median(latencies[variant]) - direct_p50 for variant in variants}
    ttft_overhead = {variant: statistics.median(ttft[variant]) - direct_ttft for variant in variants}
    cpu_ms = {variant: cpu_seconds[variant] * 1000 / requests[variant] for variant in variants}
    first = variants[0]
    lines = [
        "## Gateway overhead, variants side by side (`bench/bench_gateway_compare.py`)",
        "",
        f"{machine_line()}; interpreter `{base_interpreter()}` for every variant; {round_trip:.0f} µs for "
        "a round trip to Redis after 3 ms idle (`harness.idle_round_trip_us`); POST /v1/chat/completions "
        f"at concurrency 1, {ROUNDS} alternating rounds of {SECONDS:.1f} s per variant; streaming time to "
        f"first token over {TTFT_ROUNDS * TTFT_REQUESTS} requests per variant, also alternating; then "
        f"{THROUGHPUT_ROUNDS} rounds of {THROUGHPUT_SECONDS:.0f} s at concurrency 16. Upstream direct: "
        f"p50 {direct_p50:.2f} ms, time to first token {direct_ttft:.2f} ms.",
        "",
        "Server CPU is what gunicorn (master and workers) used per request at concurrency 1, from "
        "/proc. It leaves out the waits for Redis, PostgreSQL and the upstream, so it separates "
        "variants whose latencies drown in this VM's wake-up noise; like latency, it follows the VM's "
        "speed, so compare it within a run.",
        "",
        "| variant | overhead p50 ms | vs first | server CPU ms per request | vs first | req/s "
        "| time-to-first-token overhead p50 ms | vs first | req/s at concurrency 16 |",
        "|---|---|---|---|---|---|---|---|---|",
        *[
            f"| `{variant}` | {overhead[variant]:.2f} | {overhead[variant] / overhead[first]:.2f}x "
            f"| {cpu_ms[variant]:.2f} | {cpu_ms[variant] / cpu_ms[first]:.2f}x "
            f"| {statistics.mean(rps[variant]):.0f} | {ttft_overhead[variant]:.2f} "
            f"| {ttft_overhead[variant] / ttft_overhead[first]:.2f}x "
            f"| {statistics.mean(throughput[variant]):.0f} |"
            for variant in variants
        ],
    ]
    report = "\n".join(lines)
    print(report)
    write_section("gateway_compare", report)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(
            "usage: bench/bench_gateway_compare.py REV[:NAME=VALUE,...] REV[:NAME=VALUE,...] ..."
        )
    main(sys.argv[1:])
