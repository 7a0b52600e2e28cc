"""An invoice as HTML (the one template), PDF (that template through WeasyPrint) and CSV."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

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


def invoice_html(invoice: Invoice) -> str:
    return render_to_string("billing/invoice.html", {"invoice": invoice, "data": invoice_data(invoice)})


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
