"""Reads of traces and feedback, always within one tenant."""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from django.db.models import Prefetch, Q, QuerySet

from monitoring.models import Feedback, Trace
from tenants.models import Tenant

COMPLETION_ID_PREFIX = "chatcmpl-"


def trace_by_reference(*, tenant: Tenant, reference: str) -> Trace | None:
    """The tenant's trace named by its id, its request id (/api/v1/chat's `id`) or an OpenAI-style
    completion id (`chatcmpl-<request id>`). A request id retried under an Idempotency-Key may have
    several traces: the latest is the answer the client got."""
    value = reference.removeprefix(COMPLETION_ID_PREFIX)
    match = Q(request_id=value)
    with contextlib.suppress(ValueError):  # not a UUID: only a request id
        match |= Q(id=uuid.UUID(value))
    return (
        Trace.objects.filter(tenant=tenant)
        .filter(match)
        .only("id", "end_user", "prompt_name", "prompt_version", "prompt_variant", "created_at")
        .order_by("-created_at")
        .first()
    )


# Query parameter -> the lookup it filters on.
TRACE_FILTERS = {
    "created_after": "created_at__gte",
    "created_before": "created_at__lt",
    "status": "status",
    "refusal_reason": "refusal_reason",
    "model": "model",
    "provider": "provider",
    "endpoint": "endpoint",
    "prompt": "prompt_name",
    "prompt_version": "prompt_version",
    "prompt_variant": "prompt_variant",
    "user": "end_user",
    "conversation": "conversation_id",
    "cached": "cached",
}

FEEDBACK_FILTERS = {
    "created_after": "created_at__gte",
    "created_before": "created_at__lt",
    "trace": "trace_id",
    "name": "name",
    "user": "end_user",
    "score": "score",
}

# What a trace list shows; the texts are only read for one trace.
TRACE_LIST_DEFERRED = ("request_text", "answer_text")


def _filtered(queryset: QuerySet[Any], lookups: dict[str, str], filters: dict[str, Any]) -> QuerySet[Any]:
    return queryset.filter(**{lookups[name]: value for name, value in filters.items() if value is not None})


def trace_list(*, tenant: Tenant, filters: dict[str, Any]) -> QuerySet[Trace]:
    return _filtered(Trace.objects.filter(tenant=tenant), TRACE_FILTERS, filters).defer(*TRACE_LIST_DEFERRED)


def trace_detail_queryset(*, tenant: Tenant) -> QuerySet[Trace]:
    return Trace.objects.filter(tenant=tenant).prefetch_related(
        "spans", Prefetch("feedback", queryset=Feedback.objects.order_by("created_at"))
    )


def feedback_list(*, tenant: Tenant, filters: dict[str, Any]) -> QuerySet[Feedback]:
    return _filtered(Feedback.objects.filter(tenant=tenant), FEEDBACK_FILTERS, filters)
