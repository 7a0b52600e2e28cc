"""Shared pieces of the bench/ scripts: Django set-up, a gunicorn like `make run`'s, a load generator
and the results file. Run benchmarks with `make bench B=bench/<script>.py` (services set up for you).
"""

from __future__ import annotations

import http.client
import multiprocessing
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
RESULTS = BASE_DIR / "bench" / "RESULTS.md"


def setup_django() -> None:
    sys.path.insert(0, str(BASE_DIR))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def gunicorn(extra_env: dict[str, str] | None = None, checkout: Path = BASE_DIR) -> Iterator[int]:
    """The app under config/gunicorn.conf.py, as `make run` starts it, with production settings
    (DEBUG off; plain HTTP on loopback, so no TLS redirect); yields the port. `checkout` serves the
    code of another working tree (bench/bench_gateway_compare.py) with this virtualenv."""
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "GUNICORN_ACCESS_LOG": "",
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "0",
        "BEHIND_TLS_PROXY": "0",
        **(extra_env or {}),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "config.wsgi",
            "--config",
            "config/gunicorn.conf.py",
            "--log-level",
            "warning",
        ],
        cwd=checkout,
        env=env,
    )
    _servers[port] = process.pid
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("gunicorn did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        _servers.pop(port, None)
        process.terminate()
        process.wait(30)


_servers: dict[int, int] = {}  # port -> pid of the gunicorn master serving it


def _cpu_ticks(pid: int) -> tuple[int, int]:
    """(parent pid, user + system clock ticks) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def server_cpu_seconds(port: int) -> float:
    """CPU seconds used so far by the gunicorn serving `port`: its master and its live workers.

    Unlike latency, it leaves out the waits for other processes, so it tells small changes apart
    where latency cannot; it follows the VM's speed all the same, so compare it within a run, with
    workers that stay up."""
    master = _servers[port]
    ticks = _cpu_ticks(master)[1]
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != master:
            try:
                parent, used = _cpu_ticks(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                continue
            if parent == master:
                ticks += used
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies_ms: list[float]
    statuses: dict[int, int]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @classmethod
    def merged(cls, parts: list[LoadResult]) -> LoadResult:
        statuses: dict[int, int] = {}
        for part in parts:
            for status, count in part.statuses.items():
                statuses[status] = statuses.get(status, 0) + count
        return cls(
            sum(part.requests for part in parts),
            sum(part.seconds for part in parts),
            [latency for part in parts for latency in part.latencies_ms],
            statuses,
        )

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p99(self) -> float:
        return self.percentile(0.99)


def _client(args: tuple[int, str, dict[str, str], float, bytes | None]) -> tuple[list[float], dict[int, int]]:
    port, path, headers, seconds, body = args
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        connection.request("GET" if body is None else "POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        latencies.append((time.perf_counter() - started) * 1000)
        statuses[response.status] = statuses.get(response.status, 0) + 1
    connection.close()
    return latencies, statuses


def load(
    port: int,
    path: str,
    *,
    concurrency: int,
    seconds: float,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> LoadResult:
    """`concurrency` client processes, each one keep-alive connection in a closed loop (GET, or a POST
    of `body`)."""
    args = [(port, path, headers or {}, seconds, body)] * concurrency
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(concurrency) as pool:
        results = pool.map(_client, args)
    elapsed = time.perf_counter() - started
    latencies = [latency for part, _ in results for latency in part]
    statuses: dict[int, int] = {}
    for _, part in results:
        for status, count in part.items():
            statuses[status] = statuses.get(status, 0) + count
    return LoadResult(len(latencies), elapsed, latencies, statuses)


def time_to_first_token(
    port: int,
    path: str,
    *,
    body: bytes,
    headers: dict[str, str],
    requests: int,
    marker: bytes,
) -> list[float]:
    """Milliseconds from sending a streaming request to the first SSE line containing `marker`.

    Each stream is then read to its end before the next request is sent: at concurrency 1 a request
    must not share the server with the end of the previous one (its settlement, its trace)."""
    timings = []
    for _ in range(requests):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        started = time.perf_counter()
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        while True:
            line = response.fp.readline()
            if not line:
                raise RuntimeError(f"the stream ended without {marker!r}")
            if marker in line:
                break
        timings.append((time.perf_counter() - started) * 1000)
        # Lines were read past http.client's chunk decoding: the last chunk is "0" (or, unchunked, EOF).
        last = b"0\r\n" if response.chunked else b""
        while response.fp.readline() not in (last, b""):
            pass
        connection.close()
    return timings


def write_section(name: str, body: str) -> None:
    """Replaces this benchmark's section of bench/RESULTS.md, keeping the others."""
    text = (
        RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nWritten by the bench/ scripts.\n"
    )
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin}\n{body.strip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: section, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)


def reference_loop_ms() -> float:
    """Median time of a fixed pure-Python workload: how fast this (shared, virtual) machine is right now."""
    timings = []
    for _ in range(7):
        started = time.perf_counter()
        total = 0
        for number in range(1_000_000):
            total += number % 7
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def idle_round_trip_us() -> float:
    """Median microseconds of a Redis PING sent after 3 ms of idleness: what one network round trip
    costs a request on this (shared, virtual) machine right now, waking the peer included. The
    gateway makes about eight per request; at concurrency 1 its own CPU still weighs more
    (`server_cpu_seconds`)."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    client.ping()
    timings = []
    for _ in range(200):
        time.sleep(0.003)
        started = time.perf_counter()
        client.ping()
        timings.append((time.perf_counter() - started) * 1e6)
    client.close()
    return statistics.median(timings)


def base_interpreter() -> str:
    """The Python the virtualenv was built from."""
    return str(getattr(sys, "_base_executable", sys.executable))


def machine_line() -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, {when}"
