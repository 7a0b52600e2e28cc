"""Idempotency-Key: a retry with the same key and body gets the stored response (no second call or
charge); the same key with another body is refused (422); a retry while the first is running, 409.

The keys live in Redis. Without it a request with a key is refused (503) rather than run without the
promise it asked for; the rest of the API goes on without Redis (limits fail open)."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from django.conf import settings
from django.core.cache import cache

from tenants.errors import CACHE_ERRORS, ApiError
from tenants.models import Tenant

logger = logging.getLogger(__name__)

PENDING = "pending"


def _key(tenant: Tenant, key: str) -> str:
    return f"idem:{tenant.pk}:{hashlib.sha256(key.encode()).hexdigest()}"


def body_fingerprint(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _generation_key(tenant: Tenant, key: str) -> str:
    return f"idem-gen:{tenant.pk}:{hashlib.sha256(key.encode()).hexdigest()}"


def request_id_for(tenant: Tenant, key: str) -> str:
    """The request id of the key's current run, so the ledger's (tenant, request id) uniqueness backs
    the key up: a run whose process died after charging is not charged again when retried. A run
    abandoned (failed, or charged for a stream that broke off) moves the key to its next generation,
    so the retry, a new call to the provider, is charged as one."""
    base = "idem-" + hashlib.sha256(f"{tenant.pk}:{key}".encode()).hexdigest()[:40]
    try:
        generation = int(cache.get(_generation_key(tenant, key)) or 0)
    except CACHE_ERRORS:
        generation = 0
    return f"{base}-{generation}" if generation else base


def idempotency_begin(*, tenant: Tenant, key: str, fingerprint: str) -> dict[str, Any] | None:
    """The stored response to replay, or None after claiming the key for this request."""
    cache_key = _key(tenant, key)
    claim = {"fingerprint": fingerprint, "state": PENDING}
    try:
        if cache.add(cache_key, claim, settings.IDEMPOTENCY_PENDING_SECONDS):
            return None
        existing = cache.get(cache_key) or {}
    except CACHE_ERRORS:
        logger.exception("idempotency store unavailable; refusing a request with an Idempotency-Key")
        raise ApiError(
            "Idempotency-Key requests are unavailable right now (their store is down); retry shortly.",
            status_code=503,
            code="idempotency_unavailable",
            headers={"Retry-After": "5"},
        ) from None
    if existing.get("fingerprint") != fingerprint:
        raise ApiError(
            "This Idempotency-Key was used with a different request body or on another endpoint.",
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
    """Keeps the answer for replays. If Redis went away meanwhile the answer still goes out (it was
    charged); the claim then expires and the ledger's request id keeps a rerun from charging again."""
    try:
        cache.set(
            _key(tenant, key),
            {"fingerprint": fingerprint, "state": "done", "response": response},
            settings.IDEMPOTENCY_TTL_SECONDS,
        )
    except CACHE_ERRORS:
        logger.exception("could not store an idempotent response; its claim expires on its own")


def idempotency_abandon(*, tenant: Tenant, key: str) -> None:
    """The request failed: the key is free again, so the client's retry runs for real (under the
    key's next request id: what this run was charged stays charged, and so will the retry)."""
    try:
        generation_key = _generation_key(tenant, key)
        cache.add(generation_key, 0, settings.IDEMPOTENCY_TTL_SECONDS)
        cache.incr(generation_key)
        cache.delete(_key(tenant, key))
    except CACHE_ERRORS:
        logger.exception("could not free an Idempotency-Key; its claim expires on its own")
