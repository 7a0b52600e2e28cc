from __future__ import annotations

import csv
import io
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from decimal import Decimal

import pytest
from django.db import connections
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pypdf import PdfReader

from billing.documents import format_usd, invoice_csv, invoice_pdf
from billing.models import ImmutableInvoiceError, Invoice, InvoiceSequence, InvoiceStatus, UsageEntry
from billing.services import (
    NothingToInvoice,
    invoice_finalize,
    invoice_generate,
    invoice_void,
    invoices_finalize_due,
    invoices_generate_for_period,
    period_bounds,
    usage_record,
)
from tenants.errors import ConflictError
from tenants.models import AuditEvent
from tenants.services import tenant_create
from tests.billing.conftest import last_month, usage_record_at

MODELS = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o"),
    ("anthropic", "claude-haiku-4-5"),
    ("local", "local"),
]


def this_month() -> date:
    return timezone.localdate().replace(day=1)


def record_usage(tenant, entries, month=None):
    """Entries now, or in `month` (a month that has ended can be finalized)."""
    for index, (provider, model, input_tokens, cached, output, kind) in enumerate(entries):
        tokens = {"input_tokens": input_tokens, "cached_input_tokens": cached, "output_tokens": output}
        if month is None:
            usage_record(
                tenant=tenant, request_id=f"req-{index}", kind=kind, provider=provider, model=model, **tokens
            )
        else:
            usage_record_at(
                tenant,
                month,
                request_id=f"req-{month}-{index}",
                kind=kind,
                provider=provider,
                model=model,
                **tokens,
            )


def test_invoice_groups_by_model_and_kind_and_totals_the_ledger(tenant):
    record_usage(
        tenant,
        [
            ("openai", "gpt-4o-mini", 1000, 0, 500, "completion"),
            ("openai", "gpt-4o-mini", 2000, 100, 10, "completion"),
            ("openai", "gpt-4o-mini", 1000, 0, 500, "cache_hit"),
            ("anthropic", "claude-haiku-4-5", 10, 0, 10, "completion"),
        ],
    )
    invoice = invoice_generate(tenant=tenant, period=this_month(), actor="t")
    lines = {(line.model, line.kind): line for line in invoice.lines.all()}
    assert set(lines) == {
        ("gpt-4o-mini", "completion"),
        ("gpt-4o-mini", "cache_hit"),
        ("claude-haiku-4-5", "completion"),
    }
    mini = lines[("gpt-4o-mini", "completion")]
    assert (mini.requests, mini.input_tokens, mini.cached_input_tokens, mini.output_tokens) == (
        2,
        3000,
        100,
        510,
    )
    assert lines[("gpt-4o-mini", "cache_hit")].amount_nanos == 0
    assert lines[("gpt-4o-mini", "cache_hit")].saved_nanos > 0
    assert invoice.total_nanos == sum(
        UsageEntry.objects.filter(tenant=tenant).values_list("cost_nanos", flat=True)
    )
    assert invoice.entry_count == 4


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    entries=st.lists(
        st.tuples(
            st.sampled_from(MODELS),
            st.integers(0, 200_000),
            st.integers(0, 50_000),
            st.integers(0, 100_000),
            st.sampled_from(["completion", "cache_hit", "embedding"]),
        ),
        min_size=0,
        max_size=30,
    )
)
def test_invoice_total_equals_the_ledger_exactly(db, entries):
    # Hypothesis runs every example in the one test transaction: each needs a tenant of its own.
    tenant = tenant_create(name=f"Prop {uuid.uuid4().hex}", actor="t")
    record_usage(tenant, [(p, m, i, c, o, k) for (p, m), i, c, o, k in entries])
    if not entries:
        with pytest.raises(NothingToInvoice):
            invoice_generate(tenant=tenant, period=this_month(), actor="t")
        return
    invoice = invoice_generate(tenant=tenant, period=this_month(), actor="t")
    ledger_total = sum(UsageEntry.objects.filter(tenant=tenant).values_list("cost_nanos", flat=True))
    assert invoice.total_nanos == ledger_total
    assert sum(line.amount_nanos for line in invoice.lines.all()) == ledger_total
    rows = list(csv.DictReader(io.StringIO(invoice_csv(invoice))))
    assert sum(Decimal(row["amount_usd"]) for row in rows) == Decimal(ledger_total) / 10**9
    assert Decimal(format_usd(invoice.total_nanos)) == Decimal(ledger_total) / 10**9


def test_only_the_periods_entries_are_invoiced(tenant):
    record_usage(tenant, [("openai", "gpt-4o", 1000, 0, 1000, "completion")])
    record_usage(tenant, [("openai", "gpt-4o-mini", 1000, 0, 1000, "completion")], month=last_month())
    invoice = invoice_generate(tenant=tenant, period=last_month(), actor="t")
    assert [line.model for line in invoice.lines.all()] == ["gpt-4o-mini"]
    assert invoice.entry_count == 1


def test_a_month_without_usage_gets_no_invoice(tenant, other_tenant):
    """Neither a tenant idle that month nor a month before the tenant existed takes a draft."""
    record_usage(tenant, [("openai", "gpt-4o", 1000, 0, 1000, "completion")])
    with pytest.raises(NothingToInvoice, match=f"has no usage in {this_month():%Y-%m}"):
        invoice_generate(tenant=other_tenant, period=this_month(), actor="t")
    with pytest.raises(NothingToInvoice, match="has no usage in 2020-01"):
        invoice_generate(tenant=tenant, period=date(2020, 1, 1), actor="t")
    assert not Invoice.objects.exists()
    assert not AuditEvent.objects.filter(action="invoice.generate").exists()
    drafted = invoices_generate_for_period(period=this_month(), actor="t")
    assert [invoice.tenant_id for invoice in drafted] == [tenant.pk]


def test_a_future_month_gets_no_draft(tenant):
    record_usage(tenant, [("openai", "gpt-4o", 1000, 0, 1000, "completion")])
    next_month = period_bounds(this_month())[1].date()
    for period in (next_month, date(2099, 1, 1)):
        with pytest.raises(NothingToInvoice, match=f"{period:%Y-%m} has not started"):
            invoice_generate(tenant=tenant, period=period, actor="t")
        with pytest.raises(NothingToInvoice, match=f"{period:%Y-%m} has not started"):
            invoices_generate_for_period(period=period, actor="t")
    # Seen from the eve of this month, this month is the future too.
    with pytest.raises(NothingToInvoice, match="has not started"):
        invoice_generate(
            tenant=tenant,
            period=this_month(),
            actor="t",
            now=period_bounds(this_month())[0] - timedelta(seconds=1),
        )
    assert not Invoice.objects.exists()


def test_the_month_in_progress_drafts_but_is_not_finalized_and_takes_no_number(tenant):
    record_usage(tenant, [("openai", "gpt-4o", 1000, 0, 1000, "completion")])
    draft = invoice_generate(tenant=tenant, period=this_month(), actor="t")  # a preview is allowed
    assert draft.entry_count == 1
    end = period_bounds(this_month())[1]
    with pytest.raises(
        ConflictError, match=f"{this_month():%Y-%m} has not ended yet.*from {end:%Y-%m-%d} 00:00"
    ):
        invoice_finalize(invoice=draft, actor="t")
    with pytest.raises(ConflictError, match="has not ended"):
        invoice_finalize(invoice=draft, actor="t", now=end - timedelta(microseconds=1))
    draft.refresh_from_db()
    assert (draft.status, draft.number, draft.finalized_at) == (InvoiceStatus.DRAFT, None, None)
    assert not InvoiceSequence.objects.exists()
    assert not AuditEvent.objects.filter(action="invoice.finalize").exists()
    # Once the month is over the same draft is finalized, with the first number of its year.
    finalized = invoice_finalize(invoice=draft, actor="t", now=end)
    assert finalized.number == f"INV-{end.year}-000001"


def test_a_refused_finalize_leaves_the_numbers_gapless(tenant, other_tenant):
    record_usage(tenant, [("openai", "gpt-4o", 1000, 0, 1000, "completion")])
    record_usage(other_tenant, [("openai", "gpt-4o", 1000, 0, 1000, "completion")], month=last_month())
    current = invoice_generate(tenant=tenant, period=this_month(), actor="t")
    with pytest.raises(ConflictError):
        invoice_finalize(invoice=current, actor="t")
    ended = invoice_generate(tenant=other_tenant, period=last_month(), actor="t")
    assert invoice_finalize(invoice=ended, actor="t").number == f"INV-{timezone.now().year}-000001"


def test_an_old_empty_draft_is_never_numbered(tenant, settings):
    """A $0 draft made before empty months were refused is neither finalized nor holds up beat."""
    settings.INVOICE_FINALIZE_GRACE_DAYS = 0
    empty = Invoice.objects.create(tenant=tenant, period=last_month(), billed_to=tenant.name)
    with pytest.raises(NothingToInvoice, match="bills no usage"):
        invoice_finalize(invoice=empty, actor="t")
    assert invoices_finalize_due(today=timezone.localdate(), actor="system") == []
    empty.refresh_from_db()
    assert (empty.status, empty.number) == (InvoiceStatus.DRAFT, None)
    assert not InvoiceSequence.objects.exists()


def test_voiding_a_zero_invoice_of_a_month_without_usage_opens_no_replacement(tenant):
    """Such an invoice (numbered before future months were refused) is corrected by the void alone."""
    stray = Invoice.objects.create(
        tenant=tenant,
        period=date(2099, 1, 1),
        billed_to=tenant.name,
        status=InvoiceStatus.FINALIZED,
        number="INV-2026-000001",
        finalized_at=timezone.now(),
    )
    assert invoice_void(invoice=stray, reason="issued for a future month", actor="t") is None
    assert Invoice.objects.get(pk=stray.pk).status == InvoiceStatus.VOID
    assert Invoice.objects.count() == 1


def test_finalized_invoices_are_immutable_and_voided_by_a_replacement(tenant):
    record_usage(tenant, [("openai", "gpt-4o", 1000, 0, 1000, "completion")], month=last_month())
    invoice = invoice_finalize(
        invoice=invoice_generate(tenant=tenant, period=last_month(), actor="t"), actor="t"
    )
    assert invoice.number == f"INV-{timezone.now().year}-000001"
    invoice.total_nanos = 1
    with pytest.raises(ImmutableInvoiceError):
        invoice.save()
    with pytest.raises(ImmutableInvoiceError):
        invoice.delete()
    with pytest.raises(ConflictError):
        invoice_generate(tenant=tenant, period=last_month(), actor="t")
    with pytest.raises(ConflictError):
        invoice_finalize(invoice=invoice, actor="t")
    replacement = invoice_void(invoice=Invoice.objects.get(pk=invoice.pk), reason="wrong address", actor="t")
    assert replacement is not None
    assert Invoice.objects.get(pk=invoice.pk).status == InvoiceStatus.VOID
    assert replacement.status == InvoiceStatus.DRAFT
    assert replacement.replaces_id == invoice.pk
    assert replacement.total_nanos == Invoice.objects.get(pk=invoice.pk).total_nanos
    assert invoice_finalize(invoice=replacement, actor="t").number.endswith("000002")


@pytest.mark.django_db(transaction=True)
def test_concurrent_finalization_numbers_are_gapless_and_unique():
    drafts = []
    for index in range(12):
        tenant = tenant_create(name=f"Numbered {index}", actor="t")
        record_usage(tenant, [("local", "local", 10, 0, 10, "completion")], month=last_month())
        drafts.append(invoice_generate(tenant=tenant, period=last_month(), actor="t"))
    barrier = threading.Barrier(len(drafts))

    def finalize(invoice: Invoice) -> str:
        try:
            barrier.wait()
            return invoice_finalize(invoice=invoice, actor="t").number or ""
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=len(drafts)) as pool:
        numbers = list(pool.map(finalize, drafts))
    year = timezone.now().year
    assert sorted(numbers) == [f"INV-{year}-{n:06d}" for n in range(1, len(drafts) + 1)]


def test_pdf_and_csv_documents(tenant):
    record_usage(
        tenant,
        [
            ("openai", "gpt-4o-mini", 1234, 0, 567, "completion"),
            ("anthropic", "claude-sonnet-4-5", 100, 20, 30, "completion"),
        ],
        month=last_month(),
    )
    invoice = invoice_finalize(
        invoice=invoice_generate(tenant=tenant, period=last_month(), actor="t"), actor="t"
    )
    pdf = invoice_pdf(invoice)
    assert pdf.startswith(b"%PDF")
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert invoice.number in text
    assert "Acme" in text
    rows = list(csv.DictReader(io.StringIO(invoice_csv(invoice))))
    assert len(rows) == 2
    assert sum(Decimal(row["amount_usd"]) for row in rows) == invoice.total_usd


def test_drafts_are_finalized_after_the_grace_period(tenant, settings):
    settings.INVOICE_FINALIZE_GRACE_DAYS = 3
    record_usage(tenant, [("openai", "gpt-4o", 1000, 0, 1000, "completion")], month=last_month())
    draft = invoice_generate(tenant=tenant, period=last_month(), actor="t")
    assert invoices_finalize_due(today=this_month() + timedelta(days=1), actor="system") == []
    finalized = invoices_finalize_due(today=this_month() + timedelta(days=3), actor="system")
    assert [invoice.pk for invoice in finalized] == [draft.pk]
