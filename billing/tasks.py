"""Thin Celery tasks: ids in, services do the work."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from billing.services import (
    AlertDeliveryError,
    budget_alert_deliver,
    invoices_finalize_due,
    invoices_generate_for_period,
    previous_month,
    reservations_sweep,
)


@shared_task(
    autoretry_for=(AlertDeliveryError,),
    retry_backoff=5,
    retry_backoff_max=900,
    retry_jitter=True,
    max_retries=10,
)
def deliver_budget_alert(alert_id: int) -> None:
    budget_alert_deliver(alert_id=alert_id)


@shared_task
def sweep_expired_reservations() -> int:
    return reservations_sweep()


@shared_task
def generate_monthly_invoices() -> int:
    return len(invoices_generate_for_period(period=previous_month(timezone.localdate()), actor="system"))


@shared_task
def finalize_due_invoices() -> int:
    return len(invoices_finalize_due(today=timezone.localdate(), actor="system"))
