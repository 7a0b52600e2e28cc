"""Thin Celery tasks for monitoring: ids in, services do the work."""

from __future__ import annotations

import logging

from celery import shared_task

from monitoring.services import trace_retention_apply
from tenants.models import Tenant

logger = logging.getLogger(__name__)


@shared_task
def trace_retention_task() -> int:
    """Every tenant's traces past its retention (beat, hourly). One tenant failing does not keep the
    others' traces: it is logged, and the next run tries it again."""
    deleted = 0
    for tenant in Tenant.objects.only("id", "trace_retention_days", "store_trace_text").iterator():
        try:
            deleted += trace_retention_apply(tenant=tenant)
        except Exception:
            logger.exception("trace retention failed for tenant %s", tenant.pk)
    return deleted
