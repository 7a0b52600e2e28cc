"""The billing console: budget columns, the usage report across tenants, invoices as issued."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import Invoice, UsageKind
from billing.services import budget_update, invoice_finalize, invoice_generate, period_bounds, usage_record
from tenants.models import Tenant


def spend(tenant: Tenant, request_id: str, input_tokens: int) -> None:
    """Embedding tokens at text-embedding-3-small's $0.02 per million: 1M tokens cost $0.02."""
    usage_record(
        tenant=tenant,
        request_id=request_id,
        kind=UsageKind.EMBEDDING,
        provider="openai",
        model="text-embedding-3-small",
        input_tokens=input_tokens,
    )


@pytest.fixture
def spenders(tenant: Tenant, other_tenant: Tenant) -> tuple[Tenant, Tenant]:
    """Acme spent $0.09 of a $0.10 hard budget (>= 80 %); Globex $0.20 with no budget."""
    budget_update(tenant=tenant, actor="test", monthly_budget_usd=Decimal("0.10"))
    spend(tenant, "a-1", 4_500_000)
    spend(other_tenant, "g-1", 10_000_000)
    return tenant, other_tenant


def test_tenant_list_shows_budget_columns_sortable(admin_client, spenders) -> None:
    page = admin_client.get("/admin/tenants/tenant/?o=4").content.decode()
    for text in ("spent this month", "monthly budget", "% used", "spent today", "state"):
        assert text in page.lower()
    assert "$0.09" in page
    assert "$0.10" in page
    assert "90%" in page
    assert "≥ 80%" in page
    assert "$0.20" in page
    assert page.index("$0.09") < page.index("$0.20")  # ascending by spent this month

    descending = admin_client.get("/admin/tenants/tenant/?o=-4").content.decode()
    assert descending.index("$0.20") < descending.index("$0.09")


def test_budget_state_is_blocked_at_a_hard_limit(admin_client, spenders) -> None:
    acme, _ = spenders
    spend(acme, "a-2", 1_000_000)  # $0.11 of $0.10
    page = admin_client.get("/admin/tenants/tenant/?budget_state=2").content.decode()
    assert "Blocked" in page
    assert "Acme" in page
    assert "Globex" not in page
    budgets = admin_client.get("/admin/billing/tenantbudget/").content.decode()
    assert "Blocked" in budgets
    assert "$0.11" in budgets
    periods = admin_client.get("/admin/billing/budgetperiod/?o=-7").content.decode()
    assert "Blocked" in periods
    assert f"{timezone.localdate():%Y-%m}" in periods


def test_tenant_page_has_this_months_panel(admin_client, spenders) -> None:
    acme, _ = spenders
    page = admin_client.get(f"/admin/tenants/tenant/{acme.pk}/change/").content.decode()
    assert "This month" in page
    assert "<meter" in page
    assert "$0.09 of $0.10 (90%)" in page
    assert "Refused requests this month: 0." in page
    assert "80% of " in page  # the alert the spend crossed
    for url in (
        f"/admin/monitoring/trace/?tenant__id__exact={acme.pk}",
        f"/admin/billing/invoice/?tenant__id__exact={acme.pk}",
        f"/admin/chat/document/?tenant__id__exact={acme.pk}",
        f"/admin/tenants/apikey/?tenant__id__exact={acme.pk}",
    ):
        assert url in page


def test_usage_report_ranks_tenants_by_cost(admin_client, spenders) -> None:
    acme, _ = spenders
    page = admin_client.get("/admin/billing/invoice/usage/").content.decode()
    ranking = page.split("Tenants ranked by cost", 1)[1]
    assert ranking.index(">Globex<") < ranking.index(">Acme<")
    assert "$0.20" in page
    assert "90%" in page  # Acme's share of its budget
    assert "10,000,000" in page  # tokens with thousands separators
    assert "monitoring/vendor/chartjs/chart.umd.min.js" in page
    assert 'id="daily-cost-data"' in page
    assert f'href="?tenant={acme.pk}&amp;month=' in page  # the drill-down


def test_usage_report_drills_into_one_tenant(admin_client, spenders) -> None:
    acme, _ = spenders
    month = f"{timezone.localdate():%Y-%m}"
    page = admin_client.get(f"/admin/billing/invoice/usage/?tenant={acme.pk}&month={month}").content.decode()
    assert "openai:text-embedding-3-small" in page
    assert "Globex" not in page.split("<h2>", 1)[1]


def test_usage_report_exports_csv(admin_client, spenders) -> None:
    response = admin_client.get("/admin/billing/invoice/usage/?format=csv")
    assert response["Content-Type"] == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["slug"] for row in rows] == ["globex", "acme"]
    assert rows[0]["cost_usd"] == "0.20"
    assert rows[1]["monthly_budget_usd"] == "0.10"


@pytest.mark.parametrize("month", ["december", "2026-13", "12-2026"])
def test_usage_report_says_what_is_wrong_with_a_bad_month(admin_client, spenders, month) -> None:
    response = admin_client.get(f"/admin/billing/invoice/usage/?month={month}")
    assert response.status_code == 200
    assert "is not a month: use YYYY-MM" in response.content.decode()


def test_finalized_invoice_shows_issuer_due_date_and_no_save_or_delete(
    admin_client, tenant, settings
) -> None:
    settings.INVOICE_ISSUER_NAME = "Example LLM GmbH"
    settings.INVOICE_ISSUER_ADDRESS = "Hauptstrasse 1, 10115 Berlin"
    settings.INVOICE_PAYMENT_TERMS_DAYS = 14
    spend(tenant, "x-1", 1_234_567)
    period = timezone.localdate().replace(day=1)
    month_over = period_bounds(period)[1] + timedelta(hours=1)
    invoice = invoice_finalize(
        invoice=invoice_generate(tenant=tenant, period=period, actor="test"), actor="test", now=month_over
    )
    page = admin_client.get(f"/admin/billing/invoice/{invoice.pk}/change/").content.decode()
    assert 'name="_save"' not in page
    assert 'name="_continue"' not in page
    assert "deletelink" not in page
    assert "Example LLM GmbH" in page
    assert f"{(month_over + timedelta(days=14)).date():%Y-%m-%d}" in page
    assert "$0.02" in page  # the total in cents
    assert "$0.02469134" in page  # the line item to the nano-dollar

    html = admin_client.get(f"/admin/billing/invoice/{invoice.pk}/pdf/")
    assert html.status_code == 200
    from billing.documents import invoice_html

    text = invoice_html(Invoice.objects.get(pk=invoice.pk))
    assert "Hauptstrasse 1, 10115 Berlin" in text
    assert "Due" in text
    assert "1,234,567" in text
