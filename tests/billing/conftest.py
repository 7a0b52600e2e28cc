from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from billing import services
from billing.models import ModelPrice
from billing.pricing_data import seed_prices
from billing.services import budget_update, cost_nanos, period_bounds, previous_month, price_for
from tenants.models import Tenant


@pytest.fixture(autouse=True)
def _fresh_billing_state(db) -> None:
    """Empty per-process caches; the seed prices back (transactional tests flush migration data)."""
    services.price_table.clear()
    services._period_ids.clear()
    seed_prices(ModelPrice)


@pytest.fixture
def budget_tenant(tenant):
    """A tenant with a $1.00 hard monthly budget."""
    budget_update(tenant=tenant, actor="test", monthly_budget_usd=Decimal("1.00"))
    return tenant


def last_month() -> date:
    return previous_month(timezone.localdate())


def usage_record_at(
    tenant: Tenant,
    when: datetime | date,
    *,
    request_id: str,
    kind: str = "completion",
    provider: str = "openai",
    model: str = "gpt-4o-mini",
    input_tokens: int = 1000,
    cached_input_tokens: int = 0,
    output_tokens: int = 1000,
) -> None:
    """A ledger entry stamped `when` (a date: the 2nd of its month), priced as usage_record would.

    Only a month that has ended can be finalized, and usage_record stamps now while the ledger
    refuses UPDATE, so a past month's usage is inserted with its date, as the bench does."""
    if not isinstance(when, datetime):
        when = period_bounds(when)[0] + timedelta(days=1)
    price = price_for(provider=provider, model=model, at=when)
    cost = cost_nanos(
        price, input_tokens=input_tokens, cached_input_tokens=cached_input_tokens, output_tokens=output_tokens
    )
    cache_hit = kind == "cache_hit"
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO billing_usageentry (tenant_id, request_id, kind, provider, model, price_id,
                input_tokens, cached_input_tokens, output_tokens, cost_nanos, saved_nanos, prompt_name,
                created_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, '', %s)
            """,
            [
                tenant.pk,
                request_id,
                kind,
                provider,
                model,
                price.id,
                input_tokens,
                cached_input_tokens,
                output_tokens,
                0 if cache_hit else cost,
                cost if cache_hit else 0,
                when,
            ],
        )
