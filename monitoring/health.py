"""Dependency checks for GET /health: each returns None when healthy, or what is wrong."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from kombu import Connection

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 2


def check_database() -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return None


def check_pgvector() -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        row = cursor.fetchone()
    return None if row else "the 'vector' extension is not installed in this database (run migrate)"


def check_cache() -> str | None:
    probe_key = "health:probe"
    cache.set(probe_key, "ok", timeout=10)
    return None if cache.get(probe_key) == "ok" else "cache did not return the value just written"


def check_celery_broker() -> str | None:
    with Connection(settings.CELERY_BROKER_URL, connect_timeout=CHECK_TIMEOUT_SECONDS) as broker:
        broker.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT_SECONDS)
    return None


HEALTH_CHECKS: dict[str, Callable[[], str | None]] = {
    "database": check_database,
    "pgvector": check_pgvector,
    "cache": check_cache,
    "celery_broker": check_celery_broker,
}
# What /health, which anyone may read, says of a check that raised. The exception's text names
# hosts, ports and socket paths: it goes to the log.
UNREACHABLE = {
    "database": "database unreachable",
    "pgvector": "database unreachable",
    "cache": "cache unreachable",
    "celery_broker": "Celery broker unreachable",
}


def run_health_checks() -> dict[str, dict[str, object]]:
    results: dict[str, dict[str, object]] = {}
    for name, check in HEALTH_CHECKS.items():
        started = time.perf_counter()
        try:
            problem = check()
        except Exception:
            logger.warning("health check %s failed", name, exc_info=True)
            problem = UNREACHABLE.get(name, f"{name} check failed")
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        results[name] = {"status": "ok" if problem is None else "fail", "latency_ms": elapsed_ms}
        if problem is not None:
            results[name]["error"] = problem
    return results


# Informational sections other apps add to /health at start-up (chat adds its circuit breakers), so
# monitoring depends on no app; they never fail the check.
STATUS_SECTIONS: dict[str, Callable[[], object]] = {}


def register_status_section(name: str, read: Callable[[], object]) -> None:
    STATUS_SECTIONS[name] = read


def status_sections() -> dict[str, object]:
    sections: dict[str, object] = {}
    for name, read in STATUS_SECTIONS.items():
        try:
            sections[name] = read()
        except Exception:
            logger.warning("could not read the %s status section", name, exc_info=True)
            sections[name] = None
    return sections
