"""Idempotency-Key: a retry with the same key and body gets the stored response (no second call or
charge); the same key with another body is refused (422); a retry while the first is running, 409."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.conf import settings
from django.core.cache import cache

from tenants.errors import ApiError
from tenants.models import Tenant

PENDING = "pending"


def _key(tenant: Tenant, key: str) -> str:
    return f"idem:{tenant.pk}:{hashlib.sha256(key.encode()).hexdigest()}"


def body_fingerprint(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def request_id_for(tenant: Tenant, key: str) -> str:
    """A stable request id, so the ledger's (tenant, request id) uniqueness backs the key up."""
    return "idem-" + hashlib.sha256(f"{tenant.pk}:{key}".encode()).hexdigest()[:40]


def idempotency_begin(*, tenant: Tenant, key: str, fingerprint: str) -> dict[str, Any] | None:
    """The stored response to replay, or None after claiming the key for this request."""
    cache_key = _key(tenant, key)
    claim = {"fingerprint": fingerprint, "state": PENDING}
    if cache.add(cache_key, claim, int(settings.CHAT_REQUEST_TIMEOUT_SECONDS * 3)):
        return None
    existing = cache.get(cache_key) or {}
    if existing.get("fingerprint") != fingerprint:
        raise ApiError(
            "This Idempotency-Key was used with a different request body.",
            status_code=422,
            code="idempotency_key_reused",
            param="idempotency_key",
        )
    if existing.get("state") == PENDING:
        raise ApiError(
            "A request with this Idempotency-Key is still in progress; retry shortly.",
            status_code=409,
            code="idempotency_key_in_progress",
            param="idempotency_key",
        )
    return existing["response"]


def idempotency_complete(*, tenant: Tenant, key: str, fingerprint: str, response: dict[str, Any]) -> None:
    cache.set(
        _key(tenant, key),
        {"fingerprint": fingerprint, "state": "done", "response": response},
        settings.IDEMPOTENCY_TTL_SECONDS,
    )


def idempotency_abandon(*, tenant: Tenant, key: str) -> None:
    """The request failed: the key is free again, so the client's retry runs for real."""
    cache.delete(_key(tenant, key))
