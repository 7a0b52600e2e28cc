from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from billing.services import (
    invoice_finalize,
    invoice_generate,
    invoice_period_check,
    invoices_generate_for_period,
)
from tenants.errors import DomainError
from tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Create or refresh a month's draft invoices (all tenants with usage, or one); optionally "
        "finalize. A future month is refused, and so is finalizing a month that has not ended."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--period", required=True, help="YYYY-MM")
        parser.add_argument("--tenant", help="Only this tenant slug.")
        parser.add_argument("--finalize", action="store_true", help="Finalize (number) the drafts too.")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            period = datetime.strptime(options["period"], "%Y-%m").date()
        except ValueError as exc:
            raise CommandError("--period must look like 2026-10.") from exc
        now = timezone.now()
        try:
            # Checked before any draft is written: a refused --finalize leaves the month untouched.
            invoice_period_check(period=period, finalizing=options["finalize"], now=now)
            if options["tenant"]:
                tenant = Tenant.objects.filter(slug=options["tenant"]).first()
                if tenant is None:
                    raise CommandError(f"No tenant with slug '{options['tenant']}'.")
                invoices = [invoice_generate(tenant=tenant, period=period, actor="cli", now=now)]
            else:
                invoices = invoices_generate_for_period(period=period, actor="cli", now=now)
            for invoice in invoices:
                if options["finalize"]:
                    invoice = invoice_finalize(invoice=invoice, actor="cli", now=now)
                self.stdout.write(
                    f"{invoice.tenant.slug}\t{invoice.period:%Y-%m}\t{invoice.status}\t"
                    f"{invoice.number or '-'}\t{invoice.total_usd} USD"
                )
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"{len(invoices)} invoice(s).")
