from __future__ import annotations

from decimal import Decimal

import pytest

from billing import services
from billing.services import budget_update


@pytest.fixture(autouse=True)
def _fresh_billing_caches() -> None:
    services.price_table.clear()
    services._period_ids.clear()


@pytest.fixture
def budget_tenant(tenant):
    """A tenant with a $1.00 hard monthly budget."""
    budget_update(tenant=tenant, actor="test", monthly_budget_usd=Decimal("1.00"))
    return tenant
