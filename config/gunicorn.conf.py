"""Gunicorn settings used by `make run` and the benchmarks; every value can be overridden from the env.

Threaded workers: LLM calls and SSE streams spend their time waiting on the network, so each worker
process serves several requests at once. Scale processes with cores, threads with concurrent streams.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"


# One process per core: a threaded worker uses at most one core (the GIL), and more processes only
# spread the requests over colder ones (measured: same req/s at concurrency 16, lower latency at 1).
def usable_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, capped by a container's CPU quota (cgroup
    v2 cpu.max), which os.cpu_count() ignores (it would count the host's cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, math.ceil(int(quota) / int(period))))


# An empty value (compose passes `${WEB_CONCURRENCY:-}` through) means unset.
workers = int(os.environ.get("WEB_CONCURRENCY") or usable_cores())
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS") or "8")
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "120"))
graceful_timeout = 20
keepalive = 5
# The workers' heartbeat touches a file each loop turn: in memory, not on a disk-backed /tmp (gunicorn's
# advice; the file is its own mkstemp, private to the worker).
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108  # nosec B108  # a private mkstemp
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-") or None
errorlog = "-"


def log_format() -> str:
    """The format settings.py picks (LOG_FORMAT, else JSON unless DEBUG is on), without loading Django."""
    debug = os.environ.get("DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}
    return os.environ.get("LOG_FORMAT", "").strip() or ("plain" if debug else "json")


if log_format() == "json":
    # Gunicorn's own lines (start, worker boots, access log) in the app's JSON shape; an access line
    # carries the X-Request-ID the app answered with.
    access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}o)s'
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "config.logs.JsonFormatter"}},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
        },
        "loggers": {
            "gunicorn.error": {"handlers": ["console"], "level": "INFO", "propagate": False},
            # GUNICORN_ACCESS_LOG="" still turns the access log off.
            "gunicorn.access": {
                "handlers": ["console"] if accesslog else [],
                "level": "INFO",
                "propagate": False,
            },
        },
    }


def on_starting(server: object) -> None:
    """Start prometheus_client's multiprocess directory empty: files of a previous run's workers
    would be summed into /metrics (a container restart keeps its /tmp)."""
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.makedirs(metrics_dir, exist_ok=True)


def worker_exit(server: object, worker: object) -> None:
    """Write what the worker's background thread still holds (traces...) before it exits, then send
    the OpenTelemetry spans still waiting (when exported)."""
    from monitoring.otel import tracing
    from tenants.background import background

    background.flush()
    tracing.shutdown()


def child_exit(server: object, worker: object) -> None:
    """Drop a dead worker's files in prometheus_client's multiprocess directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
