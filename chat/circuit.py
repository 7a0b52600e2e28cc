"""A circuit breaker per provider:model, shared by every worker through Redis.

closed: calls go through; each failure is counted in a window of CIRCUIT_WINDOW_SECONDS. At
CIRCUIT_FAILURE_THRESHOLD failures the circuit opens for CIRCUIT_COOLDOWN_SECONDS: the chain skips
it. After the cooldown one worker at a time may send a probe (half-open): success closes the
circuit, failure opens it for another cooldown. If Redis is down, circuits count as closed.

Each process trusts a clean reading (closed, no failures) for CIRCUIT_STATE_CHECK_SECONDS instead of
asking Redis on every call: the healthy steady state costs no round trip, failures another worker
saw reach this one within that time, and this process's own failures at once (they drop its
reading). Any reading with failures in it is taken from Redis on every call, as before. While a
reading is trusted, this process's successes do not clear failures other workers recorded since:
those expire with their window, or the next success after the reading is refreshed clears them.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache

from tenants.errors import CACHE_ERRORS

logger = logging.getLogger(__name__)

# Whether the last circuit_allows() in this thread saw failure state (read by record_success).
_dirty: ContextVar[bool] = ContextVar("circuit_dirty", default=True)
# target -> monotonic time Redis last showed the circuit closed without failures, in this process.
_clean_since: dict[str, float] = {}
# target -> failures this process has recorded: a reading taken across one of them is not kept.
_failures_seen: dict[str, int] = {}


def _keys(target: str) -> tuple[str, str, str]:
    return f"circuit:{target}:failures", f"circuit:{target}:open_until", f"circuit:{target}:probe"


@dataclass(frozen=True)
class CircuitState:
    target: str
    state: str  # closed | open | half_open
    failures: int
    open_for_seconds: float


def circuit_allows(target: str) -> bool:
    """May a call go to `target` now? Claims the single half-open probe when the cooldown is over.

    No round trip while a recent clean reading stands, one otherwise; remembers whether the circuit
    had any failures, so that circuit_record_success costs nothing when there is nothing to reset.
    """
    read_at = _clean_since.get(target)
    if read_at is not None and time.monotonic() - read_at < settings.CIRCUIT_STATE_CHECK_SECONDS:
        _dirty.set(False)
        return True
    failures_key, open_key, probe_key = _keys(target)
    seen = _failures_seen.get(target, 0)
    try:
        state = cache.get_many([failures_key, open_key])
        _dirty.set(bool(state))
        if state:
            _clean_since.pop(target, None)
        elif _failures_seen.get(target, 0) == seen:  # no failure of this process came in meanwhile
            _clean_since[target] = time.monotonic()
        open_until = state.get(open_key)
        if open_until is None:
            return True
        if time.time() < float(open_until):
            return False
        return bool(cache.add(probe_key, 1, settings.CIRCUIT_COOLDOWN_SECONDS))
    except CACHE_ERRORS:
        logger.warning("circuit state unavailable for %s; allowing the call", target)
        return True


def circuit_record_success(target: str) -> None:
    if not _dirty.get():
        return
    try:
        cache.delete_many(list(_keys(target)))
    except CACHE_ERRORS:
        logger.warning("circuit state unavailable for %s", target)


def circuit_record_failure(target: str) -> None:
    _failures_seen[target] = _failures_seen.get(target, 0) + 1
    _clean_since.pop(target, None)
    failures_key, open_key, probe_key = _keys(target)
    try:
        half_open = cache.get(probe_key) is not None
        cache.add(failures_key, 0, settings.CIRCUIT_WINDOW_SECONDS)
        failures = cache.incr(failures_key)
        if half_open or failures >= settings.CIRCUIT_FAILURE_THRESHOLD:
            cooldown = settings.CIRCUIT_COOLDOWN_SECONDS
            cache.set(open_key, time.time() + cooldown, cooldown * 10)
            cache.delete(probe_key)
            logger.warning("circuit %s opened for %ss after %s failures", target, cooldown, failures)
    except (*CACHE_ERRORS, ValueError):
        logger.warning("circuit state unavailable for %s", target)


def circuit_readings_forget() -> None:
    """Drops this process's clean readings, so the next call of each circuit asks Redis."""
    _clean_since.clear()


def circuit_state(target: str) -> CircuitState:
    failures_key, open_key, _ = _keys(target)
    try:
        failures = int(cache.get(failures_key) or 0)
        open_until = cache.get(open_key)
    except CACHE_ERRORS:
        return CircuitState(target, "unknown", 0, 0)
    if open_until is None:
        return CircuitState(target, "closed", failures, 0)
    remaining = float(open_until) - time.time()
    return CircuitState(target, "open" if remaining > 0 else "half_open", failures, max(remaining, 0))
