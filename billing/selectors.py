"""Reads about money for a tenant: budget status and live usage, aggregated in SQL."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from django.db.models import (
    BigIntegerField,
    Case,
    Count,
    ExpressionWrapper,
    F,
    FilteredRelation,
    FloatField,
    IntegerField,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)
from django.db.models.functions import Cast, Coalesce, NullIf, TruncDay
from django.utils import timezone

from billing.documents import format_usd
from billing.models import NANOS_PER_USD, BudgetAlert, BudgetPeriod, Invoice, InvoiceStatus, UsageEntry, nanos
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


# --- the admin's budget columns and usage report --------------------------------------------------

BUDGET_WARNING_PERCENT = 80
BUDGET_OK, BUDGET_WARNING, BUDGET_BLOCKED = 0, 1, 2


def budget_columns(
    *,
    spent: Any,
    reserved: Any,
    month_limit: Any,
    day_spent: Any,
    day_reserved: Any,
    day_limit: Any,
    hard_limit: str,
) -> dict[str, Any]:
    """Annotations for a list of budgets, computed in SQL so that the admin can sort by them:
    month_spent, month_limit, percent_used, day_spent and budget_state (0 ok, 1 at or over 80 %,
    2 blocked: a hard limit reached, so requests are refused). Arguments are expressions over
    the queryset's period balance and budget; `hard_limit` names a boolean field or annotation."""
    month_spent = Coalesce(spent, 0, output_field=BigIntegerField())
    month_used = month_spent + Coalesce(reserved, 0, output_field=BigIntegerField())
    day_used = Coalesce(day_spent, 0) + Coalesce(day_reserved, 0)
    blocked = Q(month_limit__isnull=False, month_used__gte=F("month_limit")) | Q(
        day_limit__isnull=False, day_used__gte=F("day_limit")
    )
    return {
        "month_spent": month_spent,
        "month_used": month_used,
        "month_limit": month_limit,
        "day_spent": Coalesce(day_spent, 0, output_field=BigIntegerField()),
        "day_used": day_used,
        "day_limit": day_limit,
        "percent_used": ExpressionWrapper(
            Cast(F("month_spent"), FloatField()) * 100 / NullIf(Cast(F("month_limit"), FloatField()), 0),
            output_field=FloatField(),
        ),
        "budget_state": Case(
            When(Q(**{hard_limit: True}) & blocked, then=Value(BUDGET_BLOCKED)),
            When(
                month_limit__isnull=False,
                month_spent__gte=F("month_limit") * BUDGET_WARNING_PERCENT / 100,
                then=Value(BUDGET_WARNING),
            ),
            default=Value(BUDGET_OK),
            output_field=IntegerField(),
        ),
    }


def _usd_to_nanos(field: str) -> Cast:
    return Cast(F(field) * NANOS_PER_USD, BigIntegerField())


def tenant_budget_columns(*, budget: str, today: date) -> dict[str, Any]:
    """budget_columns from this month's balance and the tenant's budget (`budget` is the path to
    the TenantBudget's fields: "budget__" from a tenant, "" from a budget). The caller first
    annotates `current_period` with current_period_relation()."""
    return {
        "budget_hard_limit": Coalesce(F(f"{budget}hard_limit"), Value(False)),
        **budget_columns(
            spent=F("current_period__spent_nanos"),
            reserved=F("current_period__reserved_nanos"),
            month_limit=_usd_to_nanos(f"{budget}monthly_budget_usd"),
            day_spent=Case(
                When(current_period__day=today, then=F("current_period__day_spent_nanos")), default=0
            ),
            day_reserved=Case(
                When(current_period__day=today, then=F("current_period__day_reserved_nanos")), default=0
            ),
            day_limit=_usd_to_nanos(f"{budget}daily_budget_usd"),
            hard_limit="budget_hard_limit",
        ),
    }


def current_period_relation(*, prefix: str, today: date) -> FilteredRelation:
    """This month's balance row, joined once (the (tenant, month) unique index serves it);
    `prefix` is the path to the tenant: "" from a tenant, "tenant__" from a budget."""
    relation = f"{prefix}billing_budgetperiod_set"
    return FilteredRelation(relation, condition=Q(**{f"{relation}__month": today.replace(day=1)}))


def month_bounds(month: date) -> tuple[datetime, datetime]:
    tz = timezone.get_current_timezone()
    start = datetime.combine(month.replace(day=1), datetime.min.time(), tzinfo=tz)
    return start, (start + timedelta(days=32)).replace(day=1)


def usage_by_tenant(*, month: date) -> list[dict[str, Any]]:
    """Every tenant with usage in the month, ranked by cost: requests, tokens, cost, cache
    savings and the share of its current monthly budget (an operator's report across tenants)."""
    start, end = month_bounds(month)
    rows = (
        UsageEntry.objects.filter(created_at__gte=start, created_at__lt=end)
        .values("tenant_id", "tenant__name", "tenant__slug", "tenant__budget__monthly_budget_usd")
        .annotate(
            requests=Count("id"),
            input_tokens=Sum("input_tokens"),
            cached_input_tokens=Sum("cached_input_tokens"),
            output_tokens=Sum("output_tokens"),
            cost=Sum("cost_nanos"),
            saved=Sum("saved_nanos"),
        )
        .order_by("-cost", "tenant__name")
    )
    return [
        {
            "tenant_id": row["tenant_id"],
            "tenant": row["tenant__name"],
            "slug": row["tenant__slug"],
            "requests": row["requests"],
            "input_tokens": row["input_tokens"],
            "cached_input_tokens": row["cached_input_tokens"],
            "output_tokens": row["output_tokens"],
            "cost_nanos": row["cost"],
            "saved_nanos": row["saved"],
            "budget_nanos": None
            if row["tenant__budget__monthly_budget_usd"] is None
            else nanos(row["tenant__budget__monthly_budget_usd"]),
        }
        for row in rows
    ]


def daily_cost(*, month: date, tenant: Tenant | None = None) -> list[tuple[date, int]]:
    """Cost per day of the month (every day, zero included), of one tenant or of all."""
    start, end = month_bounds(month)
    entries = UsageEntry.objects.filter(created_at__gte=start, created_at__lt=end)
    if tenant is not None:
        entries = entries.filter(tenant=tenant)
    by_day = {
        row["day"].date(): row["cost"]
        for row in entries.annotate(day=TruncDay("created_at"))
        .values("day")
        .annotate(cost=Sum("cost_nanos"))
        .order_by("day")
    }
    days = (end - start).days
    return [
        (start.date() + timedelta(days=offset), by_day.get(start.date() + timedelta(days=offset), 0))
        for offset in range(days)
    ]
