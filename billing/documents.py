"""An invoice as HTML (the one template), PDF (that template through WeasyPrint) and CSV."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from django.conf import settings
from django.template.loader import render_to_string

from billing.models import Invoice, InvoiceLine, usd


def format_usd(amount_nanos: int) -> str:
    """Exact, with at least two decimals: 12.5 -> '12.50', 0.000532800 -> '0.0005328'."""
    value = usd(amount_nanos) or Decimal(0)
    text = format(value.normalize(), "f")
    whole, _, fraction = text.partition(".")
    return f"{whole}.{fraction.ljust(2, '0')}"


def line_data(line: InvoiceLine) -> dict[str, Any]:
    return {
        "provider": line.provider,
        "model": line.model,
        "kind": line.kind,
        "requests": line.requests,
        "input_tokens": line.input_tokens,
        "cached_input_tokens": line.cached_input_tokens,
        "output_tokens": line.output_tokens,
        "input_usd_per_mtok": str(line.input_per_mtok),
        "cached_input_usd_per_mtok": str(line.cached_input_per_mtok),
        "output_usd_per_mtok": str(line.output_per_mtok),
        "amount_usd": format_usd(line.amount_nanos),
        "saved_usd": format_usd(line.saved_nanos),
    }


def invoice_data(invoice: Invoice) -> dict[str, Any]:
    return {
        "id": invoice.pk,
        "number": invoice.number,
        "status": invoice.status,
        "period": f"{invoice.period:%Y-%m}",
        "billed_to": invoice.billed_to,
        "currency": invoice.currency,
        "subtotal_usd": format_usd(invoice.subtotal_nanos),
        "total_usd": format_usd(invoice.total_nanos),
        "entry_count": invoice.entry_count,
        "created_at": invoice.created_at,
        "finalized_at": invoice.finalized_at,
        "voided_at": invoice.voided_at,
        "void_reason": invoice.void_reason,
        "lines": [line_data(line) for line in invoice.lines.all()],
    }


def invoice_issuer() -> tuple[str, str]:
    """The issuer's name and postal address (settings), printed on every invoice."""
    return settings.INVOICE_ISSUER_NAME, settings.INVOICE_ISSUER_ADDRESS


def invoice_due_date(invoice: Invoice) -> date | None:
    """Payment terms run from finalization; a draft or void invoice is not due."""
    if invoice.finalized_at is None or invoice.voided_at is not None:
        return None
    return (invoice.finalized_at + timedelta(days=settings.INVOICE_PAYMENT_TERMS_DAYS)).date()


def format_dollars(amount_nanos: int) -> str:
    """'$1,234.56', rounded half-up to the cent: totals; line items keep every nano-dollar."""
    cents = (Decimal(amount_nanos) / 10**9).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"-${-cents:,}" if cents < 0 else f"${cents:,}"


def invoice_html(invoice: Invoice) -> str:
    name, address = invoice_issuer()
    data = invoice_data(invoice)
    counts = ("requests", "input_tokens", "cached_input_tokens", "output_tokens")
    context = {
        "invoice": invoice,
        "data": data,
        "lines": [{**line, **{key: f"{line[key]:,}" for key in counts}} for line in data["lines"]],
        "issuer_name": name,
        "issuer_address": address,
        "due_date": invoice_due_date(invoice),
        "subtotal": format_dollars(invoice.subtotal_nanos),
        "total": format_dollars(invoice.total_nanos),
    }
    return render_to_string("billing/invoice.html", context)


def invoice_pdf(invoice: Invoice) -> bytes:
    import weasyprint  # imported on use: it loads Pango, which only invoice rendering needs

    pdf: bytes = weasyprint.HTML(string=invoice_html(invoice)).write_pdf()
    return pdf


CSV_COLUMNS = [
    "provider",
    "model",
    "kind",
    "requests",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "input_usd_per_mtok",
    "cached_input_usd_per_mtok",
    "output_usd_per_mtok",
    "amount_usd",
    "saved_usd",
]


def invoice_csv(invoice: Invoice) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for line in invoice.lines.all():
        writer.writerow(line_data(line))
    return buffer.getvalue()


def invoice_filename(invoice: Invoice, extension: str) -> str:
    return f"{invoice.number or f'draft-{invoice.period:%Y-%m}-{invoice.pk}'}.{extension}"
