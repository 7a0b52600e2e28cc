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
from billing.models import ImmutableInvoiceError, Invoice, InvoiceStatus, UsageEntry
from billing.services import (
    invoice_finalize,
    invoice_generate,
    invoice_void,
    invoices_finalize_due,
    usage_record,
)
from tenants.errors import ConflictError
from tenants.services import tenant_create

MODELS = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4o"),
    ("anthropic", "claude-haiku-4-5"),
    ("local", "local"),
]


def this_month() -> date:
    return timezone.localdate().replace(day=1)


def record_usage(tenant, entries):
    for index, (provider, model, input_tokens, cached, output, kind) in enumerate(entries):
        usage_record(
            tenant=tenant,
            request_id=f"req-{index}",
            kind=kind,
            provider=provider,
            model=model,
            input_tokens=input_tokens,
            cached_input_tokens=cached,
            output_tokens=output,
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
    invoice = invoice_generate(tenant=tenant, period=this_month(), actor="t")
    ledger_total = sum(UsageEntry.objects.filter(tenant=tenant).values_list("cost_nanos", flat=True))
    assert invoice.total_nanos == ledger_total
    assert sum(line.amount_nanos for line in invoice.lines.all()) == ledger_total
    rows = list(csv.DictReader(io.StringIO(invoice_csv(invoice))))
    assert sum(Decimal(row["amount_usd"]) for row in rows) == Decimal(ledger_total) / 10**9
    assert Decimal(format_usd(invoice.total_nanos)) == Decimal(ledger_total) / 10**9


def test_only_the_periods_entries_are_invoiced(tenant):
    record_usage(tenant, [("openai", "gpt-4o", 1000, 0, 1000, "completion")])
    last_month = (this_month() - timedelta(days=1)).replace(day=1)
    assert invoice_generate(tenant=tenant, period=last_month, actor="t").total_nanos == 0


def test_finalized_invoices_are_immutable_and_voided_by_a_replacement(tenant):
    record_usage(tenant, [("openai", "gpt-4o", 1000, 0, 1000, "completion")])
    invoice = invoice_finalize(
        invoice=invoice_generate(tenant=tenant, period=this_month(), actor="t"), actor="t"
    )
    assert invoice.number == f"INV-{timezone.now().year}-000001"
    invoice.total_nanos = 1
    with pytest.raises(ImmutableInvoiceError):
        invoice.save()
    with pytest.raises(ImmutableInvoiceError):
        invoice.delete()
    with pytest.raises(ConflictError):
        invoice_generate(tenant=tenant, period=this_month(), actor="t")
    with pytest.raises(ConflictError):
        invoice_finalize(invoice=invoice, actor="t")
    replacement = invoice_void(invoice=Invoice.objects.get(pk=invoice.pk), reason="wrong address", actor="t")
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
        drafts.append(invoice_generate(tenant=tenant, period=this_month(), actor="t"))
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
    )
    invoice = invoice_finalize(
        invoice=invoice_generate(tenant=tenant, period=this_month(), actor="t"), actor="t"
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
    last_month = (this_month() - timedelta(days=1)).replace(day=1)
    draft = invoice_generate(tenant=tenant, period=last_month, actor="t")
    assert invoices_finalize_due(today=this_month() + timedelta(days=1), actor="system") == []
    finalized = invoices_finalize_due(today=this_month() + timedelta(days=3), actor="system")
    assert [invoice.pk for invoice in finalized] == [draft.pk]
