from __future__ import annotations

import csv
import io
from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.models import BudgetAlert, Invoice, InvoiceSequence, TenantBudget
from billing.services import budget_reserve, budget_update, invoice_finalize, invoice_generate, usage_record
from tenants.models import Scope, Tenant
from tests.billing.conftest import last_month, usage_record_at
from tests.conftest import client_with_key


@pytest.fixture
def billing_client(tenant, make_key):
    return client_with_key(make_key(tenant, scopes=[Scope.BILLING_READ])[1])


def charge(tenant, request_id, model="gpt-4o-mini", input_tokens=1000, output_tokens=1000):
    return usage_record(
        tenant=tenant,
        request_id=request_id,
        kind="completion",
        provider="openai",
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
    )


def finalized_invoice(tenant) -> Invoice:
    """Last month's: a month in progress cannot be finalized."""
    usage_record_at(tenant, last_month(), request_id="r1")
    return invoice_finalize(
        invoice=invoice_generate(tenant=tenant, period=last_month(), actor="t"), actor="t"
    )


def test_budget_shows_budget_spent_reserved_remaining_and_alerts(tenant, billing_client):
    budget_update(tenant=tenant, actor="t", monthly_budget_usd=Decimal("1.00"))
    charge(tenant, "r1", input_tokens=1_000_000, output_tokens=1_000_000)  # $0.75 = 75 %
    budget_reserve(
        tenant=tenant,
        request_id="r2",
        provider="openai",
        model="gpt-4o-mini",
        prompt_tokens=100_000,
        max_tokens=100_000,
    )  # $0.075
    body = billing_client.get("/api/v1/budget").json()
    assert body["monthly_budget_usd"] == "1.00"
    assert body["spent_usd"] == "0.75"
    assert body["reserved_usd"] == "0.075"
    assert body["remaining_usd"] == "0.175"
    assert body["alert_thresholds"] == [50, 80, 100]
    assert [alert["threshold_percent"] for alert in body["alerts"]] == [50]
    assert BudgetAlert.objects.count() == 1


def test_usage_by_model_and_by_day(tenant, billing_client):
    charge(tenant, "a")
    charge(tenant, "b", model="gpt-4o")
    by_model = billing_client.get("/api/v1/usage?group_by=model").json()
    assert [(row["model"], row["requests"]) for row in by_model["results"]] == [
        ("gpt-4o", 1),
        ("gpt-4o-mini", 1),
    ]
    today = timezone.localdate().isoformat()
    by_day = billing_client.get(f"/api/v1/usage?from={today}&to={today}&group_by=day").json()
    assert by_day["results"][0]["day"] == today
    assert by_day["results"][0]["requests"] == 2
    assert by_day["results"][0]["cost_usd"] == "0.01325"


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("from=yesterday", "from"),
        ("group_by=week", "group_by"),
        ("from=2026-02-01&to=2026-01-01", "from"),
        ("from=2020-01-01&to=2026-01-01", "to"),
    ],
)
def test_bad_usage_queries_are_400(billing_client, query, param):
    response = billing_client.get(f"/api/v1/usage?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_invoices_json_html_pdf_csv(tenant, billing_client):
    invoice = finalized_invoice(tenant)
    charge(tenant, "r2")
    invoice_generate(tenant=tenant, period=timezone.localdate(), actor="t")  # a draft
    listed = billing_client.get("/api/v1/invoices").json()["results"]
    assert [item["number"] for item in listed] == [invoice.number]  # drafts are not shown to tenants
    detail = billing_client.get(f"/api/v1/invoices/{invoice.pk}").json()
    assert detail["total_usd"] == "0.00075"
    assert detail["lines"][0]["model"] == "gpt-4o-mini"
    pdf = billing_client.get(f"/api/v1/invoices/{invoice.pk}/pdf")
    assert pdf["Content-Type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    assert invoice.number in pdf["Content-Disposition"]
    rows = list(
        csv.DictReader(io.StringIO(billing_client.get(f"/api/v1/invoices/{invoice.pk}/csv").content.decode()))
    )
    assert sum(Decimal(row["amount_usd"]) for row in rows) == Decimal(detail["total_usd"])
    html = billing_client.get(f"/api/v1/invoices/{invoice.pk}/html").content.decode()
    assert invoice.number in html


def test_invoice_downloads_answer_clients_that_accept_only_their_type(tenant, other_tenant, billing_client):
    """curl -H 'Accept: application/pdf' and the like: the API's one renderer is JSON, and DRF's
    content negotiation refused them (406) before the view ran. Errors there stay JSON."""
    invoice, theirs = finalized_invoice(tenant), finalized_invoice(other_tenant)
    for suffix, accept in (
        ("pdf", "application/pdf"),
        ("csv", "text/csv"),
        ("html", "text/html"),
        ("pdf", ""),
    ):
        response = billing_client.get(f"/api/v1/invoices/{invoice.pk}/{suffix}", HTTP_ACCEPT=accept)
        assert response.status_code == 200, (suffix, accept, response.content[:200])
        assert response["Content-Type"].startswith(accept or "application/pdf")
        missing = billing_client.get(f"/api/v1/invoices/{theirs.pk}/{suffix}", HTTP_ACCEPT=accept)
        assert missing.status_code == 404
        assert missing.json()["error"]["type"] == "not_found_error"
    assert billing_client.get(f"/api/v1/invoices/{invoice.pk}/pdf?format=pdf").status_code == 200


def test_billing_needs_the_billing_read_scope(tenant, make_key):
    chat_only = client_with_key(make_key(tenant, scopes=[Scope.CHAT])[1])
    for url in ("/api/v1/budget", "/api/v1/usage", "/api/v1/invoices"):
        assert chat_only.get(url).status_code == 403


def test_another_tenants_invoice_is_404(tenant, other_tenant, billing_client):
    theirs = finalized_invoice(other_tenant)
    for suffix in ("", "/pdf", "/csv", "/html"):
        assert billing_client.get(f"/api/v1/invoices/{theirs.pk}{suffix}").status_code == 404


def test_create_tenant_with_budgets(db):
    out = io.StringIO()
    call_command("create_tenant", "Budgeted", "--budget-usd", "25", "--daily-budget-usd", "2.50", stdout=out)
    budget = TenantBudget.objects.get(tenant__slug="budgeted")
    assert (budget.monthly_budget_usd, budget.daily_budget_usd) == (Decimal("25"), Decimal("2.50"))


def test_create_tenant_with_a_bad_budget_creates_nothing(db):
    with pytest.raises(CommandError):
        call_command("create_tenant", "Broke", "--budget-usd", "-5", stdout=io.StringIO())
    assert not Tenant.objects.filter(slug="broke").exists()


def test_generate_invoices_command(tenant):
    usage_record_at(tenant, last_month(), request_id="r1")
    out = io.StringIO()
    call_command("generate_invoices", "--period", f"{last_month():%Y-%m}", "--finalize", stdout=out)
    invoice = Invoice.objects.get(tenant=tenant)
    assert invoice.number in out.getvalue()
    with pytest.raises(CommandError, match="2026-10"):
        call_command("generate_invoices", "--period", "October", stdout=io.StringIO())


def test_generate_invoices_command_refuses_to_finalize_a_month_in_progress(tenant):
    charge(tenant, "r1")
    month = f"{timezone.localdate():%Y-%m}"
    for extra in ([], ["--tenant", tenant.slug]):
        with pytest.raises(CommandError, match=f"{month} has not ended yet"):
            call_command("generate_invoices", "--period", month, "--finalize", *extra, stdout=io.StringIO())
    assert not Invoice.objects.exists()  # refused before any draft was written
    assert not InvoiceSequence.objects.exists()
    out = io.StringIO()
    call_command("generate_invoices", "--period", month, stdout=out)  # a draft is a preview
    assert Invoice.objects.get(tenant=tenant).status == "draft"


def test_generate_invoices_command_refuses_future_months_and_idle_tenants(tenant, other_tenant):
    charge(tenant, "r1")
    for month in ["2099-01", f"{timezone.localdate() + timedelta(days=32):%Y-%m}"]:
        with pytest.raises(CommandError, match=f"{month} has not started"):
            call_command("generate_invoices", "--period", month, stdout=io.StringIO())
    month = f"{timezone.localdate():%Y-%m}"
    with pytest.raises(CommandError, match=f"{other_tenant.slug} has no usage in {month}"):
        call_command(
            "generate_invoices", "--period", month, "--tenant", other_tenant.slug, stdout=io.StringIO()
        )
    assert not Invoice.objects.exists()


@pytest.mark.parametrize(
    "url",
    [
        "/admin/billing/invoice/",
        "/admin/billing/invoice/generate/",
        "/admin/billing/invoice/usage/",
        "/admin/billing/modelprice/",
        "/admin/billing/modelprice/add/",
        "/admin/billing/tenantbudget/",
        "/admin/billing/usageentry/",
        "/admin/billing/budgetalert/",
        "/admin/billing/budgetperiod/",
    ],
)
def test_billing_admin_pages(admin_client, client, tenant, url):
    charge(tenant, "r1")
    assert admin_client.get(url + (f"?tenant={tenant.pk}" if "usage/" in url else "")).status_code == 200
    assert client.get(url).status_code == 302


def test_admin_generates_finalizes_downloads_and_voids(admin_client, tenant):
    usage_record_at(tenant, last_month(), request_id="r1")
    period = f"{last_month():%Y-%m}"
    assert admin_client.post("/admin/billing/invoice/generate/", {"period": period}).status_code == 302
    invoice = Invoice.objects.get(tenant=tenant)
    admin_client.post(
        "/admin/billing/invoice/", {"action": "finalize_drafts", "_selected_action": [invoice.pk]}
    )
    invoice.refresh_from_db()
    assert invoice.number
    assert admin_client.get(f"/admin/billing/invoice/{invoice.pk}/pdf/").content.startswith(b"%PDF")
    assert admin_client.get(f"/admin/billing/invoice/{invoice.pk}/change/").status_code == 200
    response = admin_client.post(
        f"/admin/billing/invoice/{invoice.pk}/void/", {"reason": "wrong tenant name"}
    )
    assert response.status_code == 302
    assert Invoice.objects.get(pk=invoice.pk).status == "void"
    assert Invoice.objects.get(replaces=invoice).status == "draft"


def test_admin_refuses_to_finalize_a_month_in_progress(admin_client, tenant):
    charge(tenant, "r1")
    draft = invoice_generate(tenant=tenant, period=timezone.localdate(), actor="t")
    response = admin_client.post(
        "/admin/billing/invoice/",
        {"action": "finalize_drafts", "_selected_action": [draft.pk]},
        follow=True,
    )
    shown = [str(message) for message in response.context["messages"]]
    assert any(f"{timezone.localdate():%Y-%m} has not ended yet" in message for message in shown), shown
    draft.refresh_from_db()
    assert (draft.status, draft.number) == ("draft", None)
    assert not InvoiceSequence.objects.exists()


def test_admin_refuses_to_generate_a_future_month(admin_client, tenant):
    charge(tenant, "r1")
    response = admin_client.post("/admin/billing/invoice/generate/", {"period": "2099-01"})
    assert response.status_code == 200
    shown = [str(message) for message in response.context["messages"]]
    assert shown == ["2099-01 has not started yet; there is nothing to invoice."]
    assert not Invoice.objects.exists()


def test_admin_budget_edit_goes_through_the_service(admin_client, tenant):
    budget = TenantBudget.objects.create(tenant=tenant)
    response = admin_client.post(
        f"/admin/billing/tenantbudget/{budget.pk}/change/",
        {
            "tenant": tenant.pk,
            "monthly_budget_usd": "12.00",
            "daily_budget_usd": "",
            "hard_limit": "on",
            "alert_thresholds": "50,90",
            "alert_emails": "",
            "webhook_url": "",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    budget.refresh_from_db()
    assert budget.monthly_budget_usd == Decimal("12.00")
    assert budget.alert_thresholds == [50, 90]


def test_far_dates_are_400_not_500(billing_client):
    response = billing_client.get("/api/v1/usage?from=9999-12-30&to=9999-12-31")
    assert response.status_code == 400


def test_admin_budget_form_rejects_bad_values_without_500(admin_client, tenant):
    budget = TenantBudget.objects.create(tenant=tenant)
    response = admin_client.post(
        f"/admin/billing/tenantbudget/{budget.pk}/change/",
        {
            "tenant": tenant.pk,
            "monthly_budget_usd": "-5",
            "daily_budget_usd": "",
            "hard_limit": "on",
            "alert_thresholds": "0,5000",
            "alert_emails": "",
            "webhook_url": "",
        },
    )
    assert response.status_code == 200
    budget.refresh_from_db()
    assert budget.monthly_budget_usd is None


def test_admin_invoice_urls_with_bad_ids_are_404(admin_client, db):
    assert admin_client.get("/admin/billing/invoice/999999/pdf/").status_code == 404
    assert admin_client.get("/admin/billing/invoice/999999/void/").status_code == 404
    assert admin_client.get("/admin/billing/invoice/usage/?tenant=abc").status_code == 200


def test_view_only_staff_cannot_void_generate_or_finalize(client, tenant, django_user_model):
    from django.contrib.auth.models import Permission

    invoice = finalized_invoice(tenant)
    viewer = django_user_model.objects.create_user("viewer", password="pw-for-tests", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_invoice"))
    client.force_login(viewer)
    assert client.get(f"/admin/billing/invoice/{invoice.pk}/pdf/").status_code == 200
    assert client.post(f"/admin/billing/invoice/{invoice.pk}/void/", {"reason": "x"}).status_code == 403
    assert client.post("/admin/billing/invoice/generate/", {"period": "2026-01"}).status_code == 403
    assert Invoice.objects.get(pk=invoice.pk).status == "finalized"
