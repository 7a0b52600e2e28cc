"""Thin Celery tasks: ids in, services do the work."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.utils import timezone

from chat.documents import document_fail, document_ingest
from chat.models import SemanticCacheEntry
from chat.retrieval import tenant_vector_index_sync, vector_indexes_sync

logger = logging.getLogger(__name__)

INGEST_MAX_RETRIES = 5


@shared_task(bind=True, max_retries=INGEST_MAX_RETRIES, acks_late=True)
def document_ingest_task(self: Any, document_id: str) -> str | None:
    """Ingests a document; an embedding provider error is retried with backoff, then the document is
    marked failed with the reason (POST /api/v1/documents/{id}/reingest tries again)."""
    try:
        document = document_ingest(document_id=document_id)
    except Exception as exc:
        if self.request.retries < INGEST_MAX_RETRIES:
            raise self.retry(exc=exc, countdown=min(2 ** (self.request.retries + 1), 60)) from exc
        logger.exception("ingesting document %s failed for good", document_id)
        document_fail(document_id=document_id, reason=f"Embedding failed: {type(exc).__name__}: {exc}")
        return "failed"
    return None if document is None else str(document.status)


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
