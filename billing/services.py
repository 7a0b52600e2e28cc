"""Every write about money: prices, budgets, reserve -> settle/release, alerts, invoices.

The chat pipeline calls `budget_reserve` before a provider call and `budget_settle` (or
`budget_release`) after it. Each is one SQL statement in the steady state: the reservation is a
conditional UPDATE of the tenant's period balance row chained with the INSERT of the reservation;
the settlement deletes the reservation, inserts the ledger entry (once per request id) and moves
the amounts in the balance row. No lock is held across the provider call.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from functools import partial
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from billing.models import (
    BudgetAlert,
    BudgetPeriod,
    Invoice,
    InvoiceLine,
    InvoiceSequence,
    InvoiceStatus,
    ModelKind,
    ModelPrice,
    TenantBudget,
    UsageKind,
    nanos,
    usd,
)
from tenants.caching import StampedLocalCache
from tenants.database import ASYNC_COMMIT_CTE, async_commit_param, prepared_cursor
from tenants.errors import ApiError, ConflictError, DomainError
from tenants.models import Tenant
from tenants.services import audit_event_record

logger = logging.getLogger(__name__)


class BudgetExceeded(DomainError):
    status_code = 402
    code = "budget_exceeded"


class ModelNotPriced(DomainError):
    code = "model_not_priced"


class NothingToInvoice(DomainError):
    """The month has not started, or the tenant has no ledger entry in it: no invoice is drafted."""

    code = "nothing_to_invoice"


# --- prices -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Price:
    id: int
    provider: str
    model: str
    input_per_mtok: Decimal
    cached_input_per_mtok: Decimal
    output_per_mtok: Decimal
    effective_from: datetime
    kind: str = ModelKind.CHAT


price_table: StampedLocalCache[dict[tuple[str, str], list[Price]]] = StampedLocalCache(
    "prices", lambda: settings.PROMPT_CACHE_CHECK_SECONDS
)


def _load_prices() -> dict[tuple[str, str], list[Price]]:
    table: dict[tuple[str, str], list[Price]] = {}
    for row in ModelPrice.objects.order_by("provider", "model", "-effective_from"):
        table.setdefault((row.provider, row.model), []).append(
            Price(
                row.pk,
                row.provider,
                row.model,
                row.input_per_mtok,
                row.cached_input_per_mtok,
                row.output_per_mtok,
                row.effective_from,
                row.kind,
            )
        )
    return table


def priced_models(*, kind: str | None = None) -> list[tuple[str, str]]:
    """Every (provider, model) with a price, from the per-process price table; only those of `kind`
    (chat, embedding) when given, as their latest price row says."""
    table = price_table.get("all", "all", _load_prices)
    return sorted(key for key, prices in table.items() if kind is None or prices[0].kind == kind)


def chat_models() -> list[tuple[str, str]]:
    return priced_models(kind=ModelKind.CHAT)


def embedding_models() -> list[tuple[str, str]]:
    return priced_models(kind=ModelKind.EMBEDDING)


def price_for(*, provider: str, model: str, at: datetime | None = None) -> Price:
    """The price in force at `at` (now by default). A model without one is refused, never free."""
    moment = at or timezone.now()
    for price in price_table.get("all", "all", _load_prices).get((provider, model), []):
        if price.effective_from <= moment:
            return price
    raise ModelNotPriced(
        f"No price for {provider}:{model}; an operator must add one before it can be used.", param="model"
    )


@transaction.atomic
def model_price_add(
    *,
    provider: str,
    model: str,
    input_per_mtok: Decimal,
    cached_input_per_mtok: Decimal,
    output_per_mtok: Decimal,
    effective_from: datetime,
    actor: str,
) -> ModelPrice:
    price = ModelPrice(
        provider=provider,
        model=model,
        input_per_mtok=input_per_mtok,
        cached_input_per_mtok=cached_input_per_mtok,
        output_per_mtok=output_per_mtok,
        effective_from=effective_from,
    )
    price.full_clean()
    price.save()
    audit_event_record(
        tenant=None,
        actor=actor,
        action="price.add",
        target=price,
        changes={"price": [None, f"{input_per_mtok}/{cached_input_per_mtok}/{output_per_mtok}"]},
    )
    price_table.invalidate("all")
    return price


def cost_nanos(price: Price, *, input_tokens: int, cached_input_tokens: int, output_tokens: int) -> int:
    """Exact: tokens x USD per million = nano-dollars x 1000, rounded half-up once."""
    exact = (
        input_tokens * price.input_per_mtok
        + cached_input_tokens * price.cached_input_per_mtok
        + output_tokens * price.output_per_mtok
    ) * 1000
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


# --- budgets and period balances ---------------------------------------------------------------------


def budget_for(*, tenant: Tenant) -> TenantBudget:
    budget, _ = TenantBudget.objects.get_or_create(tenant=tenant)
    return budget


def _limits(budget: TenantBudget) -> dict[str, Any]:
    return {
        "month_limit_nanos": None if budget.monthly_budget_usd is None else nanos(budget.monthly_budget_usd),
        "day_limit_nanos": None if budget.daily_budget_usd is None else nanos(budget.daily_budget_usd),
        "hard_limit": budget.hard_limit,
        "alert_thresholds": sorted(set(budget.alert_thresholds)),
    }


BUDGET_FIELDS = (
    "monthly_budget_usd",
    "daily_budget_usd",
    "hard_limit",
    "alert_thresholds",
    "alert_emails",
    "webhook_url",
)


@transaction.atomic
def budget_update(*, tenant: Tenant, actor: str, **changes: Any) -> TenantBudget:
    """Edits the tenant's budget and applies the new limits to the current month at once."""
    unknown = set(changes) - set(BUDGET_FIELDS)
    if unknown:
        raise DomainError(f"Unknown budget fields: {', '.join(sorted(unknown))}.")
    budget = TenantBudget.objects.select_for_update().get(pk=budget_for(tenant=tenant).pk)
    before = {field: getattr(budget, field) for field in changes}
    for field, value in changes.items():
        setattr(budget, field, value)
    if any(value is not None and value < 0 for value in (budget.monthly_budget_usd, budget.daily_budget_usd)):
        raise DomainError("Budgets cannot be negative.", param="monthly_budget_usd")
    if any(not 1 <= threshold <= 1000 for threshold in budget.alert_thresholds):
        raise DomainError("Alert thresholds are percentages between 1 and 1000.", param="alert_thresholds")
    if budget.webhook_url and not budget.webhook_secret:
        budget.webhook_secret = secrets.token_hex(32)
    budget.full_clean()
    budget.save()
    BudgetPeriod.objects.filter(tenant=tenant, month__gte=_month_start(timezone.localdate())).update(
        **_limits(budget)
    )
    audit_event_record(
        tenant=tenant,
        actor=actor,
        action="budget.update",
        target=budget,
        changes={field: [str(before[field]), str(changes[field])] for field in changes},
    )
    return budget


def _month_start(day: date) -> date:
    return day.replace(day=1)


_period_ids: dict[tuple[int, date], int] = {}


def current_period_id(*, tenant: Tenant, today: date) -> int:
    """The balance row of this month, created on first use with the budget's limits.

    Its id is cached for the process only once committed: a rolled-back creation must not leave
    a dead id behind.
    """
    month = _month_start(today)
    key = (tenant.pk, month)
    if key in _period_ids:
        return _period_ids[key]
    limits = _limits(budget_for(tenant=tenant))
    period, _ = BudgetPeriod.objects.get_or_create(
        tenant=tenant, month=month, defaults={"day": today, **limits}
    )
    transaction.on_commit(partial(_period_ids.__setitem__, key, period.pk))
    return period.pk


# --- reserve, settle, release --------------------------------------------------------------------------


@dataclass(frozen=True)
class ReservationHandle:
    id: int
    tenant_id: int
    period_id: int
    request_id: str
    amount_nanos: int
    tokens: int
    price: Price
    month: date


# The reservation commits without waiting for the disk (tenants/database.py): it is a hold that the
# durable settle (or the expiry sweep) always follows, and losing it in an OS crash, together with the
# process that made it, loses nothing.
RESERVE_SQL = f"""
WITH {ASYNC_COMMIT_CTE},
balance AS (
    UPDATE billing_budgetperiod SET
        reserved_nanos = reserved_nanos + %(amount)s,
        tokens_reserved = tokens_reserved + %(tokens)s,
        day_spent_nanos = CASE WHEN day < %(today)s THEN 0 ELSE day_spent_nanos END,
        day_reserved_nanos = (CASE WHEN day < %(today)s THEN 0 ELSE day_reserved_nanos END) + %(amount)s,
        day = GREATEST(day, %(today)s)
    WHERE id = %(period_id)s
      AND (NOT hard_limit OR month_limit_nanos IS NULL
           OR spent_nanos + reserved_nanos + %(amount)s <= month_limit_nanos)
      AND (NOT hard_limit OR day_limit_nanos IS NULL
           OR (CASE WHEN day < %(today)s THEN 0 ELSE day_spent_nanos + day_reserved_nanos END)
              + %(amount)s <= day_limit_nanos)
      AND (%(token_quota)s::bigint IS NULL OR tokens_used + tokens_reserved + %(tokens)s <= %(token_quota)s)
    RETURNING id, day
)
INSERT INTO billing_reservation
    (tenant_id, period_id, request_id, amount_nanos, tokens, day, created_at, expires_at)
SELECT %(tenant_id)s, balance.id, %(request_id)s, %(amount)s, %(tokens)s, balance.day, %(now)s, %(expires_at)s
FROM balance, async_commit
RETURNING id
"""  # noqa: S608  # nosec B608  # a module constant; every value is a bound parameter


def estimate_cost_nanos(price: Price, *, prompt_tokens: int, max_tokens: int) -> int:
    """Worst case: every prompt token uncached, and the full max_tokens of output."""
    return cost_nanos(price, input_tokens=prompt_tokens, cached_input_tokens=0, output_tokens=max_tokens)


def budget_reserve(
    *, tenant: Tenant, request_id: str, provider: str, model: str, prompt_tokens: int, max_tokens: int
) -> ReservationHandle:
    """Holds the worst-case cost and tokens, or refuses (402 budget, 429 monthly tokens) before any call."""
    price = price_for(provider=provider, model=model)
    amount = estimate_cost_nanos(price, prompt_tokens=prompt_tokens, max_tokens=max_tokens)
    tokens = prompt_tokens + max_tokens
    now = timezone.now()
    today = timezone.localdate(now)
    period_id = current_period_id(tenant=tenant, today=today)
    with prepared_cursor() as cursor:
        cursor.execute(
            RESERVE_SQL,
            {
                "amount": amount,
                "tokens": tokens,
                "today": today,
                "period_id": period_id,
                "token_quota": tenant.monthly_token_quota,
                "tenant_id": tenant.pk,
                "request_id": request_id,
                "now": now,
                "expires_at": now + timedelta(seconds=settings.BUDGET_RESERVATION_TTL_SECONDS),
                "async_commit": async_commit_param(),
            },
        )
        row = cursor.fetchone()
    if row is None:
        raise _refusal(tenant=tenant, period_id=period_id, amount=amount, tokens=tokens, today=today)
    return ReservationHandle(
        row[0], tenant.pk, period_id, request_id, amount, tokens, price, _month_start(today)
    )


def _refusal(*, tenant: Tenant, period_id: int, amount: int, tokens: int, today: date) -> Exception:
    period = BudgetPeriod.objects.get(pk=period_id)
    quota = tenant.monthly_token_quota
    if quota is not None and period.tokens_used + period.tokens_reserved + tokens > quota:
        next_month = (_month_start(today) + timedelta(days=32)).replace(day=1)
        seconds = int(
            (
                datetime.combine(next_month, datetime.min.time(), tzinfo=timezone.get_current_timezone())
                - timezone.now()
            ).total_seconds()
        )
        return ApiError(
            f"Monthly token quota of {quota} tokens reached: {period.tokens_used} used, "
            f"{period.tokens_reserved} in flight, this request may need {tokens}.",
            status_code=429,
            code="monthly_token_quota_exceeded",
            headers={"Retry-After": str(max(seconds, 1))},
        )
    day_used = period.day_spent_nanos + period.day_reserved_nanos if period.day >= today else 0
    if period.day_limit_nanos is not None and day_used + amount > period.day_limit_nanos:
        scope, limit, used = "daily", period.day_limit_nanos, day_used
    else:
        scope, limit, used = (
            "monthly",
            period.month_limit_nanos or 0,
            period.spent_nanos + period.reserved_nanos,
        )
    return BudgetExceeded(
        f"The {scope} budget of ${usd(limit):.2f} would be exceeded: ${usd(used):.6f} "
        f"spent or reserved, and this request may cost up to ${usd(amount):.6f}.",
    )


SETTLE_SQL = """
WITH reservation AS (
    DELETE FROM billing_reservation WHERE id = %(reservation_id)s RETURNING amount_nanos, tokens, day
),
entry AS (
    INSERT INTO billing_usageentry (
        tenant_id, request_id, kind, provider, model, price_id, input_tokens, cached_input_tokens,
        output_tokens, cost_nanos, saved_nanos, prompt_name, prompt_version, prompt_variant, trace_id,
        created_at)
    VALUES (%(tenant_id)s, %(request_id)s, %(kind)s, %(provider)s, %(model)s, %(price_id)s, %(input_tokens)s,
            %(cached_input_tokens)s, %(output_tokens)s, %(cost)s, %(saved)s, %(prompt_name)s,
            %(prompt_version)s, %(prompt_variant)s, %(trace_id)s, %(now)s)
    ON CONFLICT (tenant_id, request_id, kind) DO NOTHING
    RETURNING id, cost_nanos, input_tokens + cached_input_tokens + output_tokens AS tokens
),
moved AS (
    SELECT COALESCE((SELECT amount_nanos FROM reservation), 0) AS released,
           COALESCE((SELECT tokens FROM reservation), 0) AS released_tokens,
           (SELECT day FROM reservation) AS reserved_day,
           COALESCE((SELECT cost_nanos FROM entry), 0) AS charged,
           COALESCE((SELECT tokens FROM entry), 0) AS charged_tokens
)
UPDATE billing_budgetperiod AS b SET
    reserved_nanos = b.reserved_nanos - moved.released,
    tokens_reserved = b.tokens_reserved - moved.released_tokens,
    spent_nanos = b.spent_nanos + moved.charged,
    tokens_used = b.tokens_used + moved.charged_tokens,
    day_reserved_nanos = CASE WHEN b.day < %(today)s THEN 0
        ELSE b.day_reserved_nanos - (CASE WHEN moved.reserved_day = b.day THEN moved.released ELSE 0 END) END,
    day_spent_nanos = CASE WHEN b.day < %(today)s THEN moved.charged
        ELSE b.day_spent_nanos + moved.charged END,
    day = GREATEST(b.day, %(today)s)
FROM moved
WHERE b.id = %(period_id)s
RETURNING b.spent_nanos, b.month_limit_nanos, b.alert_thresholds, (SELECT id FROM entry), moved.charged
"""


@dataclass(frozen=True)
class Charge:
    entry_id: int | None  # None: this request id was already charged (idempotent retry)
    cost_nanos: int


def _charge(
    *,
    tenant_id: int,
    period_id: int,
    reservation_id: int | None,
    request_id: str,
    kind: str,
    price: Price,
    input_tokens: int,
    cached_input_tokens: int,
    output_tokens: int,
    cost: int,
    saved: int,
    prompt_name: str,
    prompt_version: int | None,
    prompt_variant: int | None,
    trace_id: UUID | None,
) -> Charge:
    now = timezone.now()
    with prepared_cursor() as cursor:
        cursor.execute(
            SETTLE_SQL,
            {
                "reservation_id": reservation_id,
                "tenant_id": tenant_id,
                "request_id": request_id,
                "kind": kind,
                "provider": price.provider,
                "model": price.model,
                "price_id": price.id,
                "input_tokens": input_tokens,
                "cached_input_tokens": cached_input_tokens,
                "output_tokens": output_tokens,
                "cost": cost,
                "saved": saved,
                "prompt_name": prompt_name,
                "prompt_version": prompt_version,
                "prompt_variant": prompt_variant,
                "trace_id": trace_id,
                "now": now,
                "today": timezone.localdate(now),
                "period_id": period_id,
            },
        )
        row = cursor.fetchone()
    assert row is not None, "the period row exists: it was created before the reservation"
    spent, month_limit, thresholds, entry_id, charged = row
    if entry_id is not None and month_limit:
        _alert_on_crossing(
            tenant_id=tenant_id,
            period_id=period_id,
            spent_after=spent,
            charged=charged,
            month_limit=month_limit,
            thresholds=thresholds,
        )
    return Charge(entry_id, charged if entry_id is not None else 0)


def budget_settle(
    *,
    handle: ReservationHandle,
    input_tokens: int,
    cached_input_tokens: int,
    output_tokens: int,
    prompt_name: str = "",
    prompt_version: int | None = None,
    prompt_variant: int | None = None,
    trace_id: UUID | None = None,
) -> Charge:
    """Charges the real usage once per request id and releases the whole reservation.

    A call that ends in the month after it was reserved is charged to the month it ends in (the
    month its ledger entry and invoice belong to); the old month only gets its reservation back.
    """
    cost = cost_nanos(
        handle.price,
        input_tokens=input_tokens,
        cached_input_tokens=cached_input_tokens,
        output_tokens=output_tokens,
    )
    today = timezone.localdate()
    period_id = handle.period_id
    reservation_id: int | None = handle.id
    if _month_start(today) != handle.month:
        budget_release(handle=handle)
        period_id = current_period_id(tenant=Tenant.objects.get(pk=handle.tenant_id), today=today)
        reservation_id = None
    return _charge(
        tenant_id=handle.tenant_id,
        period_id=period_id,
        reservation_id=reservation_id,
        request_id=handle.request_id,
        kind=UsageKind.COMPLETION,
        price=handle.price,
        input_tokens=input_tokens,
        cached_input_tokens=cached_input_tokens,
        output_tokens=output_tokens,
        cost=cost,
        saved=0,
        prompt_name=prompt_name,
        prompt_version=prompt_version,
        prompt_variant=prompt_variant,
        trace_id=trace_id,
    )


RELEASE_SQL = """
WITH reservation AS (
    DELETE FROM billing_reservation WHERE id = %(reservation_id)s RETURNING amount_nanos, tokens, day
)
UPDATE billing_budgetperiod AS b SET
    reserved_nanos = b.reserved_nanos - reservation.amount_nanos,
    tokens_reserved = b.tokens_reserved - reservation.tokens,
    day_reserved_nanos = CASE WHEN reservation.day = b.day
        THEN b.day_reserved_nanos - reservation.amount_nanos ELSE b.day_reserved_nanos END
FROM reservation
WHERE b.id = %(period_id)s
"""


def budget_release(*, handle: ReservationHandle) -> None:
    """The call failed: nothing is charged and the whole reservation is released."""
    with connection.cursor() as cursor:
        cursor.execute(RELEASE_SQL, {"reservation_id": handle.id, "period_id": handle.period_id})


def usage_record(
    *,
    tenant: Tenant,
    request_id: str,
    kind: str,
    provider: str,
    model: str,
    input_tokens: int = 0,
    cached_input_tokens: int = 0,
    output_tokens: int = 0,
    prompt_name: str = "",
    prompt_version: int | None = None,
    prompt_variant: int | None = None,
    trace_id: UUID | None = None,
) -> Charge:
    """A charge without a reservation: embeddings, and cache hits (cost 0, recording what they saved)."""
    price = price_for(provider=provider, model=model)
    cost = cost_nanos(
        price, input_tokens=input_tokens, cached_input_tokens=cached_input_tokens, output_tokens=output_tokens
    )
    is_cache_hit = kind == UsageKind.CACHE_HIT
    return _charge(
        tenant_id=tenant.pk,
        period_id=current_period_id(tenant=tenant, today=timezone.localdate()),
        reservation_id=None,
        request_id=request_id,
        kind=kind,
        price=price,
        input_tokens=input_tokens,
        cached_input_tokens=cached_input_tokens,
        output_tokens=output_tokens,
        cost=0 if is_cache_hit else cost,
        saved=cost if is_cache_hit else 0,
        prompt_name=prompt_name,
        prompt_version=prompt_version,
        prompt_variant=prompt_variant,
        trace_id=trace_id,
    )


SWEEP_SQL = """
WITH expired AS (
    DELETE FROM billing_reservation WHERE expires_at < %(now)s RETURNING period_id, amount_nanos, tokens, day
),
totals AS (
    SELECT period_id, SUM(amount_nanos) AS amount, SUM(tokens) AS tokens FROM expired GROUP BY period_id
)
UPDATE billing_budgetperiod AS b SET
    reserved_nanos = b.reserved_nanos - totals.amount,
    tokens_reserved = b.tokens_reserved - totals.tokens,
    -- only the expired reservations of the row's current day still count in its day counter
    day_reserved_nanos = b.day_reserved_nanos - COALESCE(
        (SELECT SUM(e.amount_nanos) FROM expired e WHERE e.period_id = b.id AND e.day = b.day), 0)
FROM totals
WHERE b.id = totals.period_id
RETURNING b.id
"""


def reservations_sweep(*, now: datetime | None = None) -> int:
    """Releases reservations a crashed worker never settled. Returns the balance rows touched."""
    with connection.cursor() as cursor:
        cursor.execute(SWEEP_SQL, {"now": now or timezone.now()})
        return len(cursor.fetchall())


# --- alerts ---------------------------------------------------------------------------------------------


ALERT_SQL = """
INSERT INTO billing_budgetalert (tenant_id, month, threshold_percent, spent_nanos, budget_nanos, created_at,
                                 webhook_attempts, last_error)
SELECT %(tenant_id)s, month, %(threshold)s, %(spent)s, %(budget)s, %(now)s, 0, ''
FROM billing_budgetperiod WHERE id = %(period_id)s
ON CONFLICT (tenant_id, month, threshold_percent) DO NOTHING
RETURNING id
"""


def _alert_on_crossing(
    *, tenant_id: int, period_id: int, spent_after: int, charged: int, month_limit: int, thresholds: list[int]
) -> None:
    """One alert per threshold and month: the unique constraint decides, whoever crosses first."""
    spent_before = spent_after - charged
    crossed = [t for t in thresholds if spent_before * 100 < t * month_limit <= spent_after * 100]
    for threshold in crossed:
        with connection.cursor() as cursor:
            cursor.execute(
                ALERT_SQL,
                {
                    "tenant_id": tenant_id,
                    "threshold": threshold,
                    "spent": spent_after,
                    "budget": month_limit,
                    "now": timezone.now(),
                    "period_id": period_id,
                },
            )
            row = cursor.fetchone()
        if row is not None:
            from billing.tasks import deliver_budget_alert

            transaction.on_commit(partial(deliver_budget_alert.delay, row[0]))


class AlertDeliveryError(Exception):
    """A channel failed; the task retries and the sent_at stamps keep the others from repeating."""


def webhook_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    """`t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: receivers recompute and compare."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def alert_payload(alert: BudgetAlert) -> dict[str, Any]:
    return {
        "type": "budget.threshold_crossed",
        "id": f"alert_{alert.pk}",
        "tenant": alert.tenant.slug,
        "month": f"{alert.month:%Y-%m}",
        "threshold_percent": alert.threshold_percent,
        "spent_usd": str(usd(alert.spent_nanos)),
        "budget_usd": str(usd(alert.budget_nanos)),
        "created_at": alert.created_at.isoformat(),
    }


def budget_alert_deliver(*, alert_id: int) -> None:
    """E-mail and webhook for one alert, each independently and at most once.

    Raises AlertDeliveryError when a channel failed, so the task retries; the other channel's
    sent_at stamp keeps it from being sent twice. Runs in a Celery task, outside any transaction.
    """
    alert = BudgetAlert.objects.select_related("tenant").get(pk=alert_id)
    budget = budget_for(tenant=alert.tenant)
    payload = alert_payload(alert)
    failures = []
    if budget.alert_emails and alert.email_sent_at is None:
        try:
            _send_alert_email(alert, budget, payload)
        except Exception as exc:  # SMTP errors come in many types; all of them are worth a retry
            failures.append(f"email: {type(exc).__name__}: {exc}")
    if budget.webhook_url and alert.webhook_sent_at is None:
        try:
            _post_alert_webhook(alert, budget, payload)
        except AlertDeliveryError as exc:
            failures.append(f"webhook: {exc}")
    BudgetAlert.objects.filter(pk=alert.pk).update(last_error="; ".join(failures)[:1000])
    if failures:
        raise AlertDeliveryError("; ".join(failures))


def _send_alert_email(alert: BudgetAlert, budget: TenantBudget, payload: dict[str, Any]) -> None:
    from django.core.mail import send_mail

    send_mail(
        subject=f"[{alert.tenant.name}] {alert.threshold_percent}% of the {payload['month']} budget used",
        message=f"Spent ${payload['spent_usd']} of ${payload['budget_usd']} "
        f"({alert.threshold_percent}% threshold crossed).",
        from_email=None,
        recipient_list=budget.alert_emails,
    )
    BudgetAlert.objects.filter(pk=alert.pk).update(email_sent_at=timezone.now())


def _post_alert_webhook(alert: BudgetAlert, budget: TenantBudget, payload: dict[str, Any]) -> None:
    import httpx

    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Webhook-Signature": webhook_signature(
            secret=budget.webhook_secret, timestamp=int(time.time()), body=body
        ),
        "Idempotency-Key": payload["id"],
    }
    BudgetAlert.objects.filter(pk=alert.pk).update(webhook_attempts=F("webhook_attempts") + 1)
    try:
        response = httpx.post(
            budget.webhook_url, content=body, headers=headers, timeout=settings.BUDGET_WEBHOOK_TIMEOUT_SECONDS
        )
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise AlertDeliveryError(f"{type(exc).__name__}: {exc}") from exc
    BudgetAlert.objects.filter(pk=alert.pk).update(webhook_sent_at=timezone.now())


# --- invoices -------------------------------------------------------------------------------------------


def period_bounds(period: date) -> tuple[datetime, datetime]:
    start = datetime.combine(
        period.replace(day=1), datetime.min.time(), tzinfo=timezone.get_current_timezone()
    )
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


INVOICE_LINES_SQL = """
SELECT u.provider, u.model, u.kind, COUNT(*), SUM(u.input_tokens), SUM(u.cached_input_tokens),
       SUM(u.output_tokens), SUM(u.cost_nanos), SUM(u.saved_nanos),
       p.input_per_mtok, p.cached_input_per_mtok, p.output_per_mtok
FROM billing_usageentry u JOIN billing_modelprice p ON p.id = u.price_id
WHERE u.tenant_id = %(tenant_id)s AND u.created_at >= %(start)s AND u.created_at < %(end)s
GROUP BY u.provider, u.model, u.kind, u.price_id, p.input_per_mtok, p.cached_input_per_mtok, p.output_per_mtok
ORDER BY u.provider, u.model, u.kind, p.input_per_mtok
"""


def invoice_period_check(*, period: date, finalizing: bool, now: datetime | None = None) -> None:
    """Refuses a month that has not started and, to finalize, one that has not ended: its later usage
    would never be billed, and the gapless number it took could not be given back."""
    now = now or timezone.now()
    start, end = period_bounds(period)
    if start > now:
        raise NothingToInvoice(
            f"{period:%Y-%m} has not started yet; there is nothing to invoice.",
            param="period",
            code="period_in_future",
        )
    if finalizing and end > now:
        raise ConflictError(
            f"{period:%Y-%m} has not ended yet; its invoices can be finalized from {end:%Y-%m-%d %H:%M %Z}.",
            param="period",
            code="period_not_ended",
        )


@transaction.atomic
def invoice_generate(*, tenant: Tenant, period: date, actor: str, now: datetime | None = None) -> Invoice:
    """Creates or refreshes the draft for a month, aggregated in SQL from the ledger.

    The current month may be drafted (a preview); a future month, or one in which the tenant has
    no ledger entry, raises NothingToInvoice and writes nothing."""
    period = period.replace(day=1)
    invoice_period_check(period=period, finalizing=False, now=now)
    invoice = (
        Invoice.objects.select_for_update()
        .filter(tenant=tenant, period=period)
        .exclude(status=InvoiceStatus.VOID)
        .first()
    )
    if invoice is not None and invoice.status != InvoiceStatus.DRAFT:
        raise ConflictError(f"The {period:%Y-%m} invoice is already finalized ({invoice.number}).")
    start, end = period_bounds(period)
    with connection.cursor() as cursor:
        cursor.execute(INVOICE_LINES_SQL, {"tenant_id": tenant.pk, "start": start, "end": end})
        rows = cursor.fetchall()
    if not rows:
        raise NothingToInvoice(
            f"{tenant.slug} has no usage in {period:%Y-%m}; no invoice is drafted.", code="no_usage"
        )
    if invoice is None:
        invoice = Invoice.objects.create(tenant=tenant, period=period, billed_to=tenant.name)
        audit_event_record(tenant=tenant, actor=actor, action="invoice.generate", target=invoice)
    invoice.lines.all().delete()
    InvoiceLine.objects.bulk_create(
        [
            InvoiceLine(
                invoice=invoice,
                provider=provider,
                model=model,
                kind=kind,
                requests=count,
                input_tokens=input_tokens,
                cached_input_tokens=cached,
                output_tokens=output,
                amount_nanos=amount,
                saved_nanos=saved,
                input_per_mtok=in_price,
                cached_input_per_mtok=cached_price,
                output_per_mtok=out_price,
            )
            for (
                provider,
                model,
                kind,
                count,
                input_tokens,
                cached,
                output,
                amount,
                saved,
                in_price,
                cached_price,
                out_price,
            ) in rows
        ]
    )
    invoice.subtotal_nanos = invoice.total_nanos = sum(row[7] for row in rows)
    invoice.entry_count = sum(row[3] for row in rows)
    invoice.billed_to = tenant.name
    invoice.save(update_fields=["subtotal_nanos", "total_nanos", "entry_count", "billed_to"])
    return invoice


@transaction.atomic
def invoice_finalize(*, invoice: Invoice, actor: str, now: datetime | None = None) -> Invoice:
    """Draft -> finalized with the next number of the year; the counter row lock keeps it gapless.

    Every refusal comes before the counter row is touched, so a refused draft takes no number."""
    now = now or timezone.now()
    locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
    if locked.status != InvoiceStatus.DRAFT:
        raise ConflictError(f"Invoice {locked} is {locked.status}; only a draft can be finalized.")
    invoice_period_check(period=locked.period, finalizing=True, now=now)
    if locked.entry_count == 0:
        # Only drafts made before empty months were refused can be empty; they stay unnumbered.
        raise NothingToInvoice(f"Invoice {locked} bills no usage; it is not finalized.", code="no_usage")
    InvoiceSequence.objects.get_or_create(year=now.year)
    sequence = InvoiceSequence.objects.select_for_update().get(year=now.year)
    sequence.last_number += 1
    sequence.save(update_fields=["last_number"])
    locked.number = f"INV-{now.year}-{sequence.last_number:06d}"
    locked.status = InvoiceStatus.FINALIZED
    locked.finalized_at = now
    locked.save(update_fields=["number", "status", "finalized_at"])
    audit_event_record(
        tenant=locked.tenant,
        actor=actor,
        action="invoice.finalize",
        target=locked,
        changes={"status": [InvoiceStatus.DRAFT, InvoiceStatus.FINALIZED], "number": [None, locked.number]},
    )
    return locked


@transaction.atomic
def invoice_void(*, invoice: Invoice, reason: str, actor: str) -> Invoice | None:
    """Voids a finalized invoice and opens its replacement draft (regenerated from the ledger).

    Returns None when the month has no usage: the ledger is append-only, so that is only a $0
    invoice numbered before empty months were refused, and voiding it is the whole correction."""
    if not reason.strip():
        raise DomainError("A void needs a reason.", param="reason")
    locked = Invoice.objects.select_for_update().select_related("tenant").get(pk=invoice.pk)
    if locked.status != InvoiceStatus.FINALIZED:
        raise ConflictError(f"Only finalized invoices can be voided; {locked} is {locked.status}.")
    locked.status = InvoiceStatus.VOID
    locked.voided_at = timezone.now()
    locked.void_reason = reason.strip()
    locked.save(update_fields=["status", "voided_at", "void_reason"])
    audit_event_record(
        tenant=locked.tenant,
        actor=actor,
        action="invoice.void",
        target=locked,
        changes={"status": [InvoiceStatus.FINALIZED, InvoiceStatus.VOID]},
    )
    try:
        replacement = invoice_generate(tenant=locked.tenant, period=locked.period, actor=actor)
    except NothingToInvoice:
        return None
    replacement.replaces = locked
    replacement.save(update_fields=["replaces"])
    return replacement


def previous_month(today: date) -> date:
    return (today.replace(day=1) - timedelta(days=1)).replace(day=1)


def invoices_generate_for_period(*, period: date, actor: str, now: datetime | None = None) -> list[Invoice]:
    """Drafts the month for every tenant with usage in it; a future month is refused up front."""
    invoice_period_check(period=period, finalizing=False, now=now)
    start, end = period_bounds(period)
    tenant_ids = (
        Tenant.objects.filter(usage_entries__created_at__gte=start, usage_entries__created_at__lt=end)
        .values_list("pk", flat=True)
        .distinct()
    )
    invoices = []
    for tenant in Tenant.objects.filter(pk__in=list(tenant_ids)):
        try:
            invoices.append(invoice_generate(tenant=tenant, period=period, actor=actor, now=now))
        except ConflictError:
            logger.info("invoice for %s %s already finalized", tenant.slug, period)
    return invoices


def invoices_finalize_due(*, today: date, actor: str, now: datetime | None = None) -> list[Invoice]:
    """Finalizes drafts whose month ended more than INVOICE_FINALIZE_GRACE_DAYS ago.

    A draft the services refuse (an old empty one) is skipped, so it cannot hold up the others."""
    cutoff = today - timedelta(days=settings.INVOICE_FINALIZE_GRACE_DAYS)
    finalized = []
    for invoice in Invoice.objects.filter(status=InvoiceStatus.DRAFT).select_related("tenant"):
        _, end = period_bounds(invoice.period)
        if end.date() > cutoff:
            continue
        try:
            invoice_generate(tenant=invoice.tenant, period=invoice.period, actor=actor, now=now)
            finalized.append(invoice_finalize(invoice=invoice, actor=actor, now=now))
        except DomainError as error:
            logger.warning("invoice %s not finalized: %s", invoice.pk, error.message)
    return finalized
