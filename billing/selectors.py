"""Reads about money for a tenant: budget status and live usage, aggregated in SQL."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import TruncDay
from django.utils import timezone

from billing.documents import format_usd
from billing.models import BudgetAlert, BudgetPeriod, Invoice, InvoiceStatus, UsageEntry
from billing.services import budget_for
from tenants.models import Tenant


def budget_status(*, tenant: Tenant) -> dict[str, Any]:
    budget = budget_for(tenant=tenant)
    today = timezone.localdate()
    month = today.replace(day=1)
    period = BudgetPeriod.objects.filter(tenant=tenant, month=month).first()
    spent = period.spent_nanos if period else 0
    reserved = period.reserved_nanos if period else 0
    limit = None if budget.monthly_budget_usd is None else int(budget.monthly_budget_usd * 10**9)
    day_used = period.day_spent_nanos if period and period.day == today else 0
    alerts = BudgetAlert.objects.filter(tenant=tenant, month=month).order_by("threshold_percent")
    return {
        "period": f"{month:%Y-%m}",
        "monthly_budget_usd": None if limit is None else format_usd(limit),
        "daily_budget_usd": None if budget.daily_budget_usd is None else f"{budget.daily_budget_usd:.2f}",
        "hard_limit": budget.hard_limit,
        "spent_usd": format_usd(spent),
        "reserved_usd": format_usd(reserved),
        "remaining_usd": None if limit is None else format_usd(max(limit - spent - reserved, 0)),
        "spent_today_usd": format_usd(day_used),
        "tokens_used": period.tokens_used if period else 0,
        "monthly_token_quota": tenant.monthly_token_quota,
        "alert_thresholds": sorted(budget.alert_thresholds),
        "alerts": [
            {
                "threshold_percent": a.threshold_percent,
                "spent_usd": format_usd(a.spent_nanos),
                "created_at": a.created_at,
                "email_sent": a.email_sent_at is not None,
                "webhook_sent": a.webhook_sent_at is not None,
            }
            for a in alerts
        ],
    }


def usage_summary(*, tenant: Tenant, start: date, end: date, group_by: str) -> list[dict[str, Any]]:
    """Usage from `start` to `end` inclusive, grouped by day or by provider+model, summed in SQL."""
    tz = timezone.get_current_timezone()
    entries = UsageEntry.objects.filter(
        tenant=tenant,
        created_at__gte=datetime.combine(start, datetime.min.time(), tzinfo=tz),
        created_at__lt=datetime.combine(end + timedelta(days=1), datetime.min.time(), tzinfo=tz),
    )
    keys = ["day"] if group_by == "day" else ["provider", "model"]
    if group_by == "day":
        entries = entries.annotate(day=TruncDay("created_at"))
    rows = (
        entries.values(*keys)
        .annotate(
            requests=Count("id"),
            input_tokens=Sum("input_tokens"),
            cached_input_tokens=Sum("cached_input_tokens"),
            output_tokens=Sum("output_tokens"),
            cost=Sum("cost_nanos"),
            saved=Sum("saved_nanos"),
        )
        .order_by(*keys)
    )
    return [
        {
            **{key: (row[key].date().isoformat() if key == "day" else row[key]) for key in keys},
            "requests": row["requests"],
            "input_tokens": row["input_tokens"],
            "cached_input_tokens": row["cached_input_tokens"],
            "output_tokens": row["output_tokens"],
            "cost_usd": format_usd(row["cost"]),
            "saved_usd": format_usd(row["saved"]),
        }
        for row in rows
    ]


def tenant_invoices(*, tenant: Tenant) -> QuerySet[Invoice]:
    """What a tenant sees: issued invoices (finalized or void), not drafts still being prepared."""
    return Invoice.objects.filter(tenant=tenant).exclude(status=InvoiceStatus.DRAFT).prefetch_related("lines")
