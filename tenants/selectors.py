"""Reads about tenants and keys, always filtered by tenant."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from tenants.models import ApiKey, Tenant
from tenants.ratelimits import CACHE_ERRORS, PolicyUsage, request_usages, tokens_this_minute


def api_key_list(*, tenant: Tenant) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(tenant=tenant).select_related("rotated_from").order_by("-created_at")


def _counter(usage: PolicyUsage) -> dict[str, int]:
    return {
        "used": usage.count,
        "limit": usage.limit,
        "remaining": usage.remaining,
        "reset_seconds": usage.reset_seconds,
    }


def tenant_usage_counters(request: Any, *, api_key: ApiKey) -> dict[str, dict[str, int]] | None:
    """This minute's counters as the rate limiter sees them (reads only); None while Redis is down."""
    names = {"tenant-requests": "requests_this_minute", "key-requests": "key_requests_this_minute"}
    try:
        counters = {names[usage.name]: _counter(usage) for usage in request_usages(request, api_key=api_key)}
        counters["tokens_this_minute"] = _counter(tokens_this_minute(tenant=api_key.tenant))
    except CACHE_ERRORS:
        return None
    return counters
