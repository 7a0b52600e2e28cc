from __future__ import annotations

from decimal import Decimal

import pytest

from billing import services
from billing.models import ModelPrice
from billing.pricing_data import seed_prices
from billing.services import budget_update


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
