from __future__ import annotations

import dataclasses
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, connections, transaction
from django.utils import timezone

from billing.models import AppendOnlyError, BudgetPeriod, ModelPrice, Reservation, UsageEntry
from billing.services import (
    BudgetExceeded,
    ModelNotPriced,
    budget_release,
    budget_reserve,
    budget_settle,
    budget_update,
    cost_nanos,
    model_price_add,
    price_for,
    reservations_sweep,
    usage_record,
)
from tenants.errors import ApiError


def reserve(tenant, request_id=None, prompt_tokens=1000, max_tokens=1000, model="gpt-4o-mini"):
    return budget_reserve(
        tenant=tenant,
        request_id=request_id or uuid.uuid4().hex,
        provider="openai",
        model=model,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
    )


def period(tenant) -> BudgetPeriod:
    return BudgetPeriod.objects.get(tenant=tenant)


def test_prices_are_seeded_from_the_data_file(db):
    assert price_for(provider="openai", model="gpt-4o-mini").input_per_mtok == Decimal("0.15")
    assert price_for(provider="anthropic", model="claude-sonnet-4-5").output_per_mtok == Decimal("15")
    assert price_for(provider="local", model="local").output_per_mtok == 0
    assert ModelPrice.objects.filter(model__startswith="text-embedding").count() == 3


def test_cost_is_exact_integer_nanodollars(db):
    price = price_for(provider="openai", model="gpt-4o-mini")
    # 1234 * 0.15 + 100 * 0.075 + 567 * 0.60 = 185.1 + 7.5 + 340.2 = 532.8 micro-dollars
    assert cost_nanos(price, input_tokens=1234, cached_input_tokens=100, output_tokens=567) == 532_800


def test_unpriced_model_is_refused_before_any_reservation(tenant):
    with pytest.raises(ModelNotPriced, match="no-such-model"):
        reserve(tenant, model="no-such-model")
    assert not Reservation.objects.exists()


def test_new_price_applies_from_its_effective_date_only(tenant):
    old = price_for(provider="openai", model="gpt-4o-mini")
    charged = usage_record(
        tenant=tenant,
        request_id="before",
        kind="completion",
        provider="openai",
        model="gpt-4o-mini",
        input_tokens=1_000_000,
    )
    future = timezone.now() + timedelta(days=1)
    model_price_add(
        provider="openai",
        model="gpt-4o-mini",
        input_per_mtok=Decimal("1"),
        actor="test",
        cached_input_per_mtok=Decimal("0.5"),
        output_per_mtok=Decimal("2"),
        effective_from=future,
    )
    assert price_for(provider="openai", model="gpt-4o-mini") == old
    assert price_for(provider="openai", model="gpt-4o-mini", at=future).input_per_mtok == 1
    assert charged.cost_nanos == 150_000_000
    assert UsageEntry.objects.get(request_id="before").price_id == old.id


def test_reserve_then_settle_charges_real_usage_and_releases_the_rest(budget_tenant):
    handle = reserve(budget_tenant, prompt_tokens=1000, max_tokens=1000)
    assert handle.amount_nanos == 750_000  # 1000 * 0.15 + 1000 * 0.60 micro-dollars
    assert period(budget_tenant).reserved_nanos == 750_000
    charge = budget_settle(handle=handle, input_tokens=900, cached_input_tokens=0, output_tokens=100)
    assert charge.cost_nanos == 195_000
    balance = period(budget_tenant)
    assert (balance.spent_nanos, balance.reserved_nanos, balance.tokens_used, balance.tokens_reserved) == (
        195_000,
        0,
        1000,
        0,
    )
    assert not Reservation.objects.exists()


def test_settling_twice_charges_once(budget_tenant):
    handle = reserve(budget_tenant, request_id="req-1")
    first = budget_settle(handle=handle, input_tokens=10, cached_input_tokens=0, output_tokens=10)
    again = budget_settle(handle=handle, input_tokens=10, cached_input_tokens=0, output_tokens=10)
    assert first.entry_id is not None
    assert again.entry_id is None
    assert UsageEntry.objects.filter(request_id="req-1").count() == 1
    assert period(budget_tenant).spent_nanos == first.cost_nanos


def test_a_retried_request_id_is_never_charged_twice(budget_tenant):
    for _ in range(3):
        handle = reserve(budget_tenant, request_id="same")
        budget_settle(handle=handle, input_tokens=100, cached_input_tokens=0, output_tokens=100)
    assert UsageEntry.objects.filter(request_id="same").count() == 1
    balance = period(budget_tenant)
    assert balance.spent_nanos == UsageEntry.objects.get(request_id="same").cost_nanos
    assert balance.reserved_nanos == 0


def test_release_on_failure_charges_nothing(budget_tenant):
    handle = reserve(budget_tenant)
    budget_release(handle=handle)
    balance = period(budget_tenant)
    assert (balance.spent_nanos, balance.reserved_nanos, balance.day_reserved_nanos) == (0, 0, 0)
    assert not UsageEntry.objects.exists()


def test_over_budget_is_refused_with_402(budget_tenant):
    reserve(budget_tenant, prompt_tokens=1_000_000, max_tokens=1_000_000)  # $0.75 fits
    with pytest.raises(BudgetExceeded) as refused:
        reserve(budget_tenant, prompt_tokens=1_000_000, max_tokens=1_000_000)  # another $0.75 does not
    assert refused.value.status_code == 402
    assert "monthly budget of $1.00" in refused.value.message
    assert period(budget_tenant).reserved_nanos == 750_000_000


def test_daily_budget_is_enforced_too(tenant):
    budget_update(
        tenant=tenant, actor="t", monthly_budget_usd=Decimal("10"), daily_budget_usd=Decimal("0.01")
    )
    reserve(tenant, prompt_tokens=10_000, max_tokens=10_000)  # $0.0075
    with pytest.raises(BudgetExceeded, match="daily budget"):
        reserve(tenant, prompt_tokens=10_000, max_tokens=10_000)


def test_soft_limit_allows_overspend(tenant):
    budget_update(tenant=tenant, actor="t", monthly_budget_usd=Decimal("0.00"), hard_limit=False)
    handle = reserve(tenant)
    budget_settle(handle=handle, input_tokens=1000, cached_input_tokens=0, output_tokens=1000)
    assert period(tenant).spent_nanos > 1000


def test_monthly_token_quota_uses_the_same_mechanism(tenant):
    tenant.monthly_token_quota = 3000
    reserve(tenant, prompt_tokens=1000, max_tokens=1000)
    with pytest.raises(ApiError) as refused:
        reserve(tenant, prompt_tokens=500, max_tokens=1000)
    assert refused.value.status_code == 429
    assert refused.value.get_codes() == "monthly_token_quota_exceeded"
    assert int(refused.value.headers["Retry-After"]) > 0


def test_budget_edit_applies_to_the_current_month_at_once(budget_tenant):
    reserve(budget_tenant, prompt_tokens=1_000_000, max_tokens=1_000_000)
    budget_update(tenant=budget_tenant, actor="t", monthly_budget_usd=Decimal("5"))
    reserve(budget_tenant, prompt_tokens=1_000_000, max_tokens=1_000_000)
    assert period(budget_tenant).month_limit_nanos == 5_000_000_000


def test_cache_hits_are_free_and_record_what_they_saved(tenant):
    charge = usage_record(
        tenant=tenant,
        request_id="hit",
        kind="cache_hit",
        provider="openai",
        model="gpt-4o",
        input_tokens=1000,
        output_tokens=1000,
    )
    entry = UsageEntry.objects.get(request_id="hit")
    assert (charge.cost_nanos, entry.cost_nanos, entry.saved_nanos) == (0, 0, 12_500_000)


def test_ledger_refuses_update_and_delete(tenant):
    usage_record(tenant=tenant, request_id="x", kind="completion", provider="local", model="local")
    entry = UsageEntry.objects.get()
    with pytest.raises(AppendOnlyError):
        entry.save()
    with pytest.raises(AppendOnlyError):
        entry.delete()
    with pytest.raises(AppendOnlyError):
        UsageEntry.objects.update(cost_nanos=0)
    with pytest.raises(AppendOnlyError):
        UsageEntry.objects.all().delete()
    with (
        pytest.raises(IntegrityError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("UPDATE billing_usageentry SET cost_nanos = 0")


def test_expired_reservations_are_swept(budget_tenant):
    stale = reserve(budget_tenant)
    fresh = reserve(budget_tenant)
    Reservation.objects.filter(pk=stale.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert reservations_sweep() == 1
    assert period(budget_tenant).reserved_nanos == fresh.amount_nanos
    assert list(Reservation.objects.values_list("pk", flat=True)) == [fresh.id]
    # Settling the swept reservation later still charges once and releases nothing twice.
    budget_settle(handle=stale, input_tokens=10, cached_input_tokens=0, output_tokens=10)
    assert period(budget_tenant).reserved_nanos == fresh.amount_nanos


@pytest.mark.django_db(transaction=True)
def test_64_concurrent_requests_never_overspend_and_release_everything(tenant):
    budget_update(tenant=tenant, actor="t", monthly_budget_usd=Decimal("0.01"))  # $0.01
    barrier = threading.Barrier(64)

    def one_request(index: int) -> str:
        try:
            barrier.wait()
            handle = reserve(tenant, request_id=f"r{index}", prompt_tokens=1000, max_tokens=1000)  # $0.00075
            if index % 5 == 0:
                budget_release(handle=handle)  # a failed provider call
                return "failed"
            budget_settle(handle=handle, input_tokens=1000, cached_input_tokens=0, output_tokens=900)
            return "charged"
        except BudgetExceeded:
            return "refused"
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=64) as pool:
        outcomes = list(pool.map(one_request, range(64)))
    balance = period(tenant)
    charged = sum(UsageEntry.objects.filter(tenant=tenant).values_list("cost_nanos", flat=True))
    assert balance.spent_nanos == charged
    assert balance.spent_nanos <= 10_000_000
    assert balance.reserved_nanos == 0
    assert balance.tokens_reserved == 0
    assert not Reservation.objects.exists()
    assert outcomes.count("refused") > 0
    assert outcomes.count("charged") == UsageEntry.objects.filter(tenant=tenant).count()


def test_sweep_releases_expired_reservations_of_different_days(budget_tenant):
    first = reserve(budget_tenant)
    second = reserve(budget_tenant)
    balance = period(budget_tenant)
    yesterday = balance.day - timedelta(days=1)
    Reservation.objects.filter(pk=first.id).update(
        day=yesterday, expires_at=timezone.now() - timedelta(seconds=1)
    )
    Reservation.objects.filter(pk=second.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    BudgetPeriod.objects.filter(pk=balance.pk).update(
        day_reserved_nanos=second.amount_nanos
    )  # yesterday's left
    reservations_sweep()
    balance.refresh_from_db()
    assert (balance.reserved_nanos, balance.tokens_reserved, balance.day_reserved_nanos) == (0, 0, 0)


def test_reservation_takes_the_balance_rows_day(budget_tenant):
    reserve(budget_tenant)
    tomorrow = timezone.localdate() + timedelta(days=1)
    # Another worker already passed midnight: the row is on tomorrow, with its day counters reset.
    BudgetPeriod.objects.filter(tenant=budget_tenant).update(
        day=tomorrow, day_reserved_nanos=0, day_spent_nanos=0
    )
    handle = reserve(budget_tenant)
    assert Reservation.objects.get(pk=handle.id).day == tomorrow
    budget_release(handle=handle)
    assert period(budget_tenant).day_reserved_nanos == 0


def test_a_call_settled_after_the_month_changed_is_charged_to_the_new_month(budget_tenant):
    handle = reserve(budget_tenant)
    current = period(budget_tenant)
    last_month = (current.month - timedelta(days=1)).replace(day=1)
    old = BudgetPeriod.objects.create(
        tenant=budget_tenant,
        month=last_month,
        day=last_month,
        reserved_nanos=handle.amount_nanos,
        tokens_reserved=handle.tokens,
    )
    BudgetPeriod.objects.filter(pk=current.pk).update(
        reserved_nanos=0, tokens_reserved=0, day_reserved_nanos=0
    )
    Reservation.objects.filter(pk=handle.id).update(period=old)
    moved = dataclasses.replace(handle, period_id=old.pk, month=last_month)
    charge = budget_settle(handle=moved, input_tokens=100, cached_input_tokens=0, output_tokens=100)
    old.refresh_from_db()
    current.refresh_from_db()
    assert (old.reserved_nanos, old.spent_nanos) == (0, 0)
    assert (current.spent_nanos, current.reserved_nanos) == (charge.cost_nanos, 0)


def synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


def wal_syncs() -> int:
    """WAL fsyncs so far, this backend's included (its statistics are flushed first)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT wal_sync FROM pg_stat_wal")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_reservations_and_traces_commit_without_waiting_for_the_disk(tenant):
    """A reservation (and a trace) that is its own transaction does not wait for a WAL flush; the
    setting ends with it. Inside a larger transaction it is left alone: the other writes there may
    need to be durable. Ordinary writes still wait."""
    from monitoring.models import Trace
    from monitoring.services import TraceRecorder

    configured = synchronous_commit()
    handle = reserve(tenant)
    before = wal_syncs()
    for index in range(20):
        reserve(tenant)
        TraceRecorder(tenant=tenant, request_id=f"r{index}", endpoint="test").finish()
    asynchronous = wal_syncs() - before
    before = wal_syncs()
    for index in range(20):
        tenant.__class__.objects.filter(pk=tenant.pk).update(name=f"Acme {index}")
    durable = wal_syncs() - before
    assert asynchronous < 10 <= durable, (asynchronous, durable)
    assert synchronous_commit() == configured
    assert Trace.objects.filter(request_id="r19").exists()
    with transaction.atomic():
        reserve(tenant)
        TraceRecorder(tenant=tenant, request_id="inside", endpoint="test").finish()
        assert synchronous_commit() == configured
    budget_settle(handle=handle, input_tokens=1, cached_input_tokens=0, output_tokens=1)
    assert Reservation.objects.count() == 21
