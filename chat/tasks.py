"""Thin Celery tasks: ids in, services do the work."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from chat.documents import document_fail, document_ingest, documents_fail_stalled
from chat.models import SemanticCacheEntry
from chat.providers import classify
from chat.retrieval import tenant_vector_index_sync, vector_indexes_sync

logger = logging.getLogger(__name__)

INGEST_MAX_RETRIES = 5


def _failure_kind(exc: Exception) -> tuple[str, bool]:
    """(what went wrong, in words a tenant may read; whether trying again can help)."""
    if isinstance(exc, OperationalError | InterfaceError):
        return "database unavailable", True
    error = classify(exc)  # the embedding provider's errors, as the chat chain sees them
    return error.kind.replace("_", " "), error.retryable


@shared_task(bind=True, max_retries=INGEST_MAX_RETRIES, acks_late=True)
def document_ingest_task(self: Any, document_id: str) -> str | None:
    """Ingests a document. Transient errors (timeouts, rate limits, provider 5xx, the database away) are
    retried with backoff; anything else, or the last retry, marks the document failed with the kind of
    error; the details, which may hold provider URLs and key hints, go to the worker log only.
    POST /api/v1/documents/{id}/reingest tries again."""
    try:
        document = document_ingest(document_id=document_id)
    except Exception as exc:
        kind, retryable = _failure_kind(exc)
        if retryable and self.request.retries < INGEST_MAX_RETRIES:
            raise self.retry(exc=exc, countdown=min(2 ** (self.request.retries + 1), 60)) from exc
        logger.exception("ingesting document %s failed for good", document_id)
        document_fail(
            document_id=document_id,
            reason=f"Embedding failed ({kind}); an operator can find the details in the worker log.",
        )
        return "failed"
    return None if document is None else str(document.status)


@shared_task
def documents_fail_stalled_task() -> int:
    return documents_fail_stalled()


@shared_task
def tenant_vector_index_sync_task(tenant_id: int) -> str:
    return tenant_vector_index_sync(tenant_id=tenant_id)


@shared_task
def vector_indexes_sync_task() -> dict[int, str]:
    return vector_indexes_sync()


@shared_task
def semantic_cache_purge_task() -> int:
    deleted, _ = SemanticCacheEntry.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted
