"""Reads about tenants and keys, always filtered by tenant."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

from django.core.cache import cache
from django.db import transaction
from django.db.models import QuerySet

from tenants.errors import CACHE_ERRORS
from tenants.models import ApiKey, Tenant
from tenants.ratelimits import PolicyUsage, tokens_this_minute

logger = logging.getLogger(__name__)

# Authentication reads the key and its tenant from Redis instead of compiling and running a query
# on every request. Every save of an ApiKey or Tenant drops the entries (tenants/signals.py), so
# revocations and quota edits apply at once; the TTL bounds staleness from bulk .update() calls.
API_KEY_CACHE_TTL_SECONDS = 60
# An id no key has is remembered this long too, so a client repeating an unknown (well-formed) key
# costs no query per request; entries expire, so what they hold is bounded by the request rate.
# Creating a key drops the entry of its id, like any save (tenants/signals.py).
API_KEY_MISS_TTL_SECONDS = 10
_MISSING = "missing"


def _api_key_cache_key(public_id: str) -> str:
    return f"apikey:{public_id}"


def api_key_lookup(*, public_id: str) -> ApiKey | None:
    """The key with its tenant loaded, from the cache when possible. Not filtered by usability."""
    cache_key = _api_key_cache_key(public_id)
    try:
        cached = cache.get(cache_key)
    except CACHE_ERRORS:
        logger.warning("cache unavailable for API key lookup; reading the database")
        cached = None
    if isinstance(cached, ApiKey):
        return cached
    if cached == _MISSING:
        return None
    api_key = ApiKey.objects.select_related("tenant").filter(public_id=public_id).first()
    with contextlib.suppress(*CACHE_ERRORS):
        if api_key is None:
            cache.set(cache_key, _MISSING, API_KEY_MISS_TTL_SECONDS)
        else:
            cache.set(cache_key, api_key, API_KEY_CACHE_TTL_SECONDS)
    return api_key


def api_key_cache_invalidate(*, public_ids: Iterable[str]) -> None:
    """Drops cached keys now and again after commit, so a concurrent read cannot re-cache old rows."""
    cache_keys = [_api_key_cache_key(public_id) for public_id in public_ids]
    if not cache_keys:
        return

    def drop() -> None:
        try:
            cache.delete_many(cache_keys)
        except CACHE_ERRORS:
            logger.exception(
                "could not drop cached API keys; they expire within %ss", API_KEY_CACHE_TTL_SECONDS
            )

    drop()
    transaction.on_commit(drop)


def api_key_list(*, tenant: Tenant) -> QuerySet[ApiKey]:
    return (
        ApiKey.objects.filter(tenant=tenant)
        .select_related("rotated_from", "rotated_to")
        .order_by("-created_at")
    )


def _counter(usage: PolicyUsage) -> dict[str, int]:
    return {
        "used": usage.count,
        "limit": usage.limit,
        "remaining": usage.remaining,
        "reset_seconds": usage.reset_seconds,
    }


def tenant_usage_counters(
    *, tenant: Tenant, request_usages: list[PolicyUsage]
) -> dict[str, dict[str, int]] | None:
    """This minute's counters, from the request limits just enforced plus the token window.

    None when the limiter could not reach Redis (it then admits requests and reports nothing).
    """
    if not request_usages:
        return None
    names = {"tenant-requests": "requests_this_minute", "key-requests": "key_requests_this_minute"}
    counters = {names[usage.name]: _counter(usage) for usage in request_usages}
    try:
        counters["tokens_this_minute"] = _counter(tokens_this_minute(tenant=tenant))
    except CACHE_ERRORS:
        return None
    return counters
