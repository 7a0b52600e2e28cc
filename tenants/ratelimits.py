"""Per-key and per-tenant limits in Redis: requests/minute (django-ratelimit) and tokens/minute.

Counters are Redis INCRs, so every gunicorn worker shares them and a limit of N admits N, not more.
If Redis is unreachable the limits fail open (logged): an outage of the limiter must not take the
API down with it; /health reports the cache as failed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from django.core.cache import cache
from django_ratelimit.core import get_usage
from django_redis import get_redis_connection
from redis.exceptions import NoScriptError, ResponseError

from monitoring.metrics import refusal_count
from tenants.errors import CACHE_ERRORS, ApiError
from tenants.models import ApiKey, Tenant

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60


@dataclass(frozen=True)
class PolicyUsage:
    name: str
    limit: int
    count: int
    reset_seconds: int

    @property
    def remaining(self) -> int:
        return max(self.limit - self.count, 0)

    @property
    def exceeded(self) -> bool:
        return self.count > self.limit


def rate_limit_headers(usages: list[PolicyUsage]) -> dict[str, str]:
    """IETF draft (httpapi-ratelimit-headers) structured fields: every policy, the tightest state."""
    if not usages:
        return {}
    tightest = min(usages, key=lambda usage: (usage.remaining, -usage.reset_seconds))
    return {
        "RateLimit-Policy": ", ".join(f'"{u.name}";q={u.limit};w={WINDOW_SECONDS}' for u in usages),
        "RateLimit": f'"{tightest.name}";r={tightest.remaining};t={tightest.reset_seconds}',
    }


def rate_limited_error(usages: list[PolicyUsage], message: str, code: str) -> ApiError:
    retry_after = max((u.reset_seconds for u in usages if u.exceeded), default=WINDOW_SECONDS)
    headers = {**rate_limit_headers(usages), "Retry-After": str(max(retry_after, 1))}
    return ApiError(message, status_code=429, code=code, headers=headers)


def _request_usage(
    request: Any, *, group: str, value: str, limit: int, increment: bool
) -> PolicyUsage | None:
    key: Callable[[str, Any], str] = lambda group_, request_: value  # noqa: E731
    rate: Callable[[str, Any], tuple[int, int]] = lambda group_, request_: (limit, WINDOW_SECONDS)  # noqa: E731
    usage = get_usage(request, group=group, key=key, rate=rate, increment=increment)
    if usage is None:  # RATELIMIT_ENABLE is off
        return None
    # django-ratelimit's window ending at second W still counts during second W ("time_left" 0 then):
    # the first second of the next window is W + 1, one more than its time_left.
    return PolicyUsage(group, limit, usage["count"], max(usage["time_left"], 0) + 1)


def _request_policies(api_key: ApiKey) -> list[tuple[str, str, int]]:
    """The key's own limit, when it has one, then the tenant's. A key without one (unset or 0, as
    ever) is held to the tenant's limit alone: counting it again per key would cost two Redis round
    trips a request."""
    tenant = api_key.tenant
    policies = [("tenant-requests", f"tenant:{tenant.pk}", tenant.requests_per_minute)]
    if api_key.requests_per_minute:
        policies.insert(0, ("key-requests", f"key:{api_key.pk}", api_key.requests_per_minute))
    return policies


def request_usages(request: Any, *, api_key: ApiKey) -> list[PolicyUsage]:
    """Current counts of the key's and the tenant's request windows, incrementing nothing."""
    usages = []
    for group, value, limit in _request_policies(api_key):
        usage = _request_usage(request, group=group, value=value, limit=limit, increment=False)
        if usage is not None:
            usages.append(usage)
    return usages


def request_rate_limits_enforce(request: Any, *, api_key: ApiKey) -> list[PolicyUsage]:
    """Counts this request against the key's, then the tenant's requests/minute; 429 when over.

    The tenant counter only sees requests the key's limit admitted. Two counters incremented
    independently would let concurrent requests each be refused by a different one, admitting
    fewer than the limit; in this order a limit of N admits exactly N.
    """
    usages: list[PolicyUsage] = []
    try:
        for group, value, limit in _request_policies(api_key):
            usage = _request_usage(request, group=group, value=value, limit=limit, increment=True)
            if usage is None:
                continue
            usages.append(usage)
            if usage.exceeded:
                refusal_count(tenant=api_key.tenant, code="requests_per_minute_exceeded")
                raise rate_limited_error(
                    usages,
                    "Rate limit exceeded: too many requests per minute. Retry after the Retry-After delay.",
                    code="requests_per_minute_exceeded",
                )
    except CACHE_ERRORS:
        logger.exception("rate limiter unavailable; admitting request for tenant %s", api_key.tenant_id)
        return []
    return usages


def _token_window() -> tuple[int, int]:
    now = int(time.time())
    window_end = now - now % WINDOW_SECONDS + WINDOW_SECONDS
    return window_end, window_end - now


def _token_counter_key(tenant: Tenant, window_end: int) -> str:
    return f"ratelimit:tpm:{tenant.pk}:{window_end}"


def tokens_this_minute(*, tenant: Tenant) -> PolicyUsage:
    window_end, reset = _token_window()
    count = cache.get(_token_counter_key(tenant, window_end), 0)
    return PolicyUsage("tenant-tokens", tenant.tokens_per_minute, int(count), reset)


@dataclass(frozen=True)
class TokenReservation:
    counter: str  # the minute window the tokens were taken from
    tokens: int
    usage: PolicyUsage


# INCRBY that gives a new window's counter its expiry, in one atomic command.
INCR_WITH_EXPIRY_LUA = """
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('TTL', KEYS[1]) < 0 then
    redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return count
"""

# INCRBY of a counter that still exists (one that expired or was evicted is not brought back).
INCR_IF_EXISTS_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then
    return redis.call('INCRBY', KEYS[1], ARGV[1])
end
return false
"""


@functools.cache
def _script(source: str) -> Any:
    return get_redis_connection("default").register_script(source)


class _SentScript:
    """A Lua script call written to a Redis connection, its reply read by `reply()`: whatever the
    caller does in between (a PostgreSQL round trip) overlaps the Redis one instead of following it.
    The connection is held until the reply is read, so `reply()` must always be called."""

    def __init__(self, source: str, keys: list[str], args: list[Any]) -> None:
        self.script = _script(source)
        self.keys, self.args = keys, args
        self.pool = get_redis_connection("default").connection_pool
        self.connection = self.pool.get_connection()
        try:
            self.connection.send_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
        except BaseException:
            self._release(broken=True)
            raise

    def _release(self, *, broken: bool) -> None:
        if broken:
            self.connection.disconnect()
        self.pool.release(self.connection)

    def reply(self) -> Any:
        try:
            reply = self.connection.read_response()
        except NoScriptError:  # Redis restarted or flushed its scripts: load it and run it again
            self._release(broken=False)  # the error reply was read whole: the connection is fine
            return self.script(keys=self.keys, args=self.args)
        except ResponseError:
            self._release(broken=False)
            raise
        except BaseException:
            self._release(broken=True)
            raise
        self._release(broken=False)
        return reply


def token_rate_reserve(*, tenant: Tenant, tokens: int) -> TokenReservation:
    """Takes `tokens` from this minute's allowance atomically, or raises 429 and takes nothing; 400
    for a request needing more than a whole minute's allowance, which no wait would let through."""
    if tokens > tenant.tokens_per_minute:
        raise ApiError(
            f"This request may need {tokens} tokens (its prompt and max_tokens), more than the "
            f"tenant's whole tokens-per-minute limit of {tenant.tokens_per_minute}: lower max_tokens, "
            "or ask for a higher limit.",
            status_code=400,
            code="request_over_tokens_per_minute",
        )
    window_end, reset = _token_window()
    counter = _token_counter_key(tenant, window_end)
    redis_key = cache.make_key(counter)
    try:
        count = int(_script(INCR_WITH_EXPIRY_LUA)(keys=[redis_key], args=[tokens, WINDOW_SECONDS + 5]))
        if count > tenant.tokens_per_minute:
            _script(INCR_IF_EXISTS_LUA)(keys=[redis_key], args=[-tokens])
            usage = PolicyUsage("tenant-tokens", tenant.tokens_per_minute, count, reset)
            raise rate_limited_error(
                [usage],
                "Rate limit exceeded: too many tokens per minute. Retry after the Retry-After delay.",
                code="tokens_per_minute_exceeded",
            )
    except CACHE_ERRORS:
        logger.exception("token limiter unavailable; admitting request for tenant %s", tenant.pk)
        count = 0
    return TokenReservation(
        counter, tokens, PolicyUsage("tenant-tokens", tenant.tokens_per_minute, count, reset)
    )


@contextlib.contextmanager
def token_rate_adjusting(*, tenant: Tenant, reservation: TokenReservation, used: int) -> Iterator[None]:
    """After the call: replaces the estimate by the tokens really used, in the window it was taken
    from. Sent to Redis when the block starts and confirmed when it ends (whether or not the block
    fails), so the block's own round trip (the settlement's) runs meanwhile. Once that minute is
    over its counter no longer matters, and the next is left alone."""
    window_end, _ = _token_window()
    sent = None
    if reservation.counter == _token_counter_key(tenant, window_end):
        try:
            sent = _SentScript(
                INCR_IF_EXISTS_LUA, [cache.make_key(reservation.counter)], [used - reservation.tokens]
            )
        except Exception:  # the limiter fails open: whatever went wrong, the block (the settlement) runs
            logger.exception("token limiter unavailable while adjusting tenant %s", tenant.pk)
    try:
        yield
    finally:
        if sent is not None:
            try:
                sent.reply()
            except CACHE_ERRORS:
                logger.exception("token limiter unavailable while adjusting tenant %s", tenant.pk)
