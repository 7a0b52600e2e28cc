"""The operator's billing console: prices, budgets, the ledger, alerts, invoices and usage per tenant."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import Case, F, QuerySet, When
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from billing.api import document
from billing.documents import format_usd, invoice_due_date, invoice_filename, invoice_issuer, invoice_pdf
from billing.models import (
    BudgetAlert,
    BudgetPeriod,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    ModelPrice,
    TenantBudget,
    UsageEntry,
    usd,
)
from billing.selectors import (
    budget_columns,
    current_period_relation,
    daily_cost,
    month_bounds,
    tenant_budget_columns,
    usage_by_tenant,
    usage_summary,
)
from billing.services import (
    budget_update,
    invoice_finalize,
    invoice_generate,
    invoice_void,
    invoices_generate_for_period,
    model_price_add,
    previous_month,
)
from tenants import admin_display as display
from tenants.admin import BudgetColumns, BudgetStateFilter, actor_for
from tenants.errors import DomainError
from tenants.models import Tenant


def ranking_row(row: dict[str, Any]) -> dict[str, Any]:
    budget = row["budget_nanos"]
    return {
        **row,
        "requests_display": display.count(row["requests"]),
        "input_display": display.count(row["input_tokens"]),
        "cached_display": display.count(row["cached_input_tokens"]),
        "output_display": display.count(row["output_tokens"]),
        "cost_display": display.dollars(row["cost_nanos"]),
        "saved_display": display.dollars(row["saved_nanos"]),
        "budget_display": display.dollars(budget),
        "percent_display": display.percent(row["cost_nanos"] * 100 / budget) if budget else "-",
    }


def ranking_totals(rows: list[dict[str, Any]]) -> dict[str, str]:
    return {
        "requests": display.count(sum(row["requests"] for row in rows)),
        "cost": display.dollars(sum(row["cost_nanos"] for row in rows)),
        "saved": display.dollars(sum(row["saved_nanos"] for row in rows)),
    }


USAGE_CSV_COLUMNS = [
    "tenant",
    "slug",
    "requests",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "cost_usd",
    "saved_usd",
    "monthly_budget_usd",
]


def usage_csv(
    *, month: date, tenant: Tenant | None, ranking: list[dict[str, Any]], days: list[tuple[date, int]]
) -> HttpResponse:
    """The report as CSV with exact amounts: the ranking, or one tenant's cost per day."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if tenant is None:
        writer.writerow(USAGE_CSV_COLUMNS)
        for row in ranking:
            budget = row["budget_nanos"]
            writer.writerow(
                [
                    row["tenant"],
                    row["slug"],
                    row["requests"],
                    row["input_tokens"],
                    row["cached_input_tokens"],
                    row["output_tokens"],
                    format_usd(row["cost_nanos"]),
                    format_usd(row["saved_nanos"]),
                    "" if budget is None else format_usd(budget),
                ]
            )
        name = f"usage-{month:%Y-%m}.csv"
    else:
        writer.writerow(["day", "cost_usd"])
        writer.writerows([f"{day:%Y-%m-%d}", format_usd(cost)] for day, cost in days)
        name = f"usage-{tenant.slug}-{month:%Y-%m}.csv"
    return document(buffer.getvalue().encode(), "text/csv", name)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Prices are added, never edited: a change is a new row with its own effective date."""

    list_display = [
        "provider",
        "model",
        "input_per_mtok",
        "cached_input_per_mtok",
        "output_per_mtok",
        "effective_from",
    ]
    list_filter = ["provider"]
    search_fields = ["model"]

    def get_readonly_fields(self, request: HttpRequest, obj: ModelPrice | None = None) -> list[str]:
        return [field.name for field in ModelPrice._meta.fields] if obj else ["currency"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: ModelPrice, form: forms.ModelForm, change: bool) -> None:
        if change:
            return
        saved = model_price_add(
            provider=obj.provider,
            model=obj.model,
            input_per_mtok=obj.input_per_mtok,
            cached_input_per_mtok=obj.cached_input_per_mtok,
            output_per_mtok=obj.output_per_mtok,
            effective_from=obj.effective_from,
            actor=actor_for(request),
        )
        obj.pk = saved.pk


@admin.register(TenantBudget)
class TenantBudgetAdmin(BudgetColumns, admin.ModelAdmin):
    list_display = [
        "tenant",
        "month_spent_display",
        "month_limit_display",
        "percent_used_display",
        "day_spent_display",
        "daily_budget",
        "budget_state_display",
        "hard_limit",
    ]
    list_filter = ["hard_limit", BudgetStateFilter]
    list_select_related = ["tenant"]
    search_fields = ["tenant__name", "tenant__slug"]
    readonly_fields = ["webhook_secret", "updated_at", "usage_link"]
    autocomplete_fields = ["tenant"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def get_queryset(self, request: HttpRequest) -> QuerySet[TenantBudget]:
        today = timezone.localdate()
        return (
            super()
            .get_queryset(request)
            .annotate(current_period=current_period_relation(prefix="tenant__", today=today))
            .annotate(**tenant_budget_columns(budget="", today=today))
        )

    @admin.display(description="daily budget", ordering="daily_budget_usd")
    def daily_budget(self, budget: TenantBudget) -> str:
        return display.dollars_from_usd(budget.daily_budget_usd)

    @admin.display(description="usage")
    def usage_link(self, budget: TenantBudget) -> str:
        if budget.tenant_id is None:
            return "-"
        url = reverse("admin:billing_tenant_usage") + f"?tenant={budget.tenant_id}"
        return format_html('<a href="{}">Usage of this tenant</a>', url)

    def save_model(
        self, request: HttpRequest, obj: TenantBudget, form: forms.ModelForm, change: bool
    ) -> None:
        """Through the service: audited, and the limits apply to the current month at once."""
        changes = {field: form.cleaned_data[field] for field in form.changed_data if field != "tenant"}
        if not change:
            TenantBudget.objects.get_or_create(tenant=obj.tenant)
        saved = budget_update(tenant=obj.tenant, actor=actor_for(request), **changes)
        obj.pk = saved.pk


@admin.register(BudgetPeriod)
class BudgetPeriodAdmin(BudgetColumns, ReadOnlyAdmin):
    list_display = [
        "tenant",
        "period",
        "month_spent_display",
        "month_limit_display",
        "percent_used_display",
        "day_spent_display",
        "budget_state_display",
        "tokens",
    ]
    list_filter = ["month", BudgetStateFilter]
    search_fields = ["tenant__name", "tenant__slug"]
    list_select_related = ["tenant"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[BudgetPeriod]:
        today = timezone.localdate()
        return (
            super()
            .get_queryset(request)
            .annotate(
                **budget_columns(
                    spent=F("spent_nanos"),
                    reserved=F("reserved_nanos"),
                    month_limit=F("month_limit_nanos"),
                    day_spent=Case(When(day=today, then=F("day_spent_nanos")), default=0),
                    day_reserved=Case(When(day=today, then=F("day_reserved_nanos")), default=0),
                    day_limit=F("day_limit_nanos"),
                    hard_limit="hard_limit",
                )
            )
        )

    @admin.display(description="month", ordering="month")
    def period(self, period: BudgetPeriod) -> str:
        return display.period(period.month)

    @admin.display(description="tokens used", ordering="tokens_used")
    def tokens(self, period: BudgetPeriod) -> str:
        return display.count(period.tokens_used)


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin):
    list_display = [
        "tenant",
        "period",
        "threshold_percent",
        "spent",
        "created",
        "email_sent",
        "webhook_sent",
        "webhook_attempts",
        "last_error",
    ]
    list_filter = ["threshold_percent", "month"]
    search_fields = ["tenant__name", "tenant__slug"]
    list_select_related = ["tenant"]

    @admin.display(description="month", ordering="month")
    def period(self, alert: BudgetAlert) -> str:
        return display.period(alert.month)

    @admin.display(description="spent then", ordering="spent_nanos")
    def spent(self, alert: BudgetAlert) -> str:
        return display.dollars(alert.spent_nanos)

    @admin.display(description="created", ordering="created_at")
    def created(self, alert: BudgetAlert) -> str:
        return display.timestamp(alert.created_at)

    @admin.display(description="e-mail sent", ordering="email_sent_at")
    def email_sent(self, alert: BudgetAlert) -> str:
        return display.timestamp(alert.email_sent_at)

    @admin.display(description="webhook sent", ordering="webhook_sent_at")
    def webhook_sent(self, alert: BudgetAlert) -> str:
        return display.timestamp(alert.webhook_sent_at)


@admin.register(UsageEntry)
class UsageEntryAdmin(ReadOnlyAdmin):
    list_display = [
        "created",
        "tenant",
        "request_id",
        "kind",
        "model_name",
        "input",
        "output",
        "cost",
    ]
    list_filter = ["kind", "provider", "model"]
    search_fields = ["request_id", "tenant__slug", "model"]
    list_select_related = ["tenant"]
    date_hierarchy = "created_at"
    show_full_result_count = False  # the ledger is large; no COUNT(*) over it per page

    @admin.display(description="when", ordering="created_at")
    def created(self, entry: UsageEntry) -> str:
        return display.timestamp(entry.created_at)

    @admin.display(description="model", ordering="model")
    def model_name(self, entry: UsageEntry) -> str:
        return f"{entry.provider}:{entry.model}"

    @admin.display(description="input tokens", ordering="input_tokens")
    def input(self, entry: UsageEntry) -> str:
        return display.count(entry.input_tokens)

    @admin.display(description="cached", ordering="cached_input_tokens")
    def cached_input(self, entry: UsageEntry) -> str:
        return display.count(entry.cached_input_tokens)

    @admin.display(description="output tokens", ordering="output_tokens")
    def output(self, entry: UsageEntry) -> str:
        return display.count(entry.output_tokens)

    @admin.display(description="cost", ordering="cost_nanos")
    def cost(self, entry: UsageEntry) -> str:
        return display.dollars(entry.cost_nanos)

    @admin.display(description="prompt", ordering="prompt_name")
    def prompt(self, entry: UsageEntry) -> str:
        if not entry.prompt_name:
            return "-"
        return f"{entry.prompt_name} v{entry.prompt_version}" if entry.prompt_version else entry.prompt_name


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    fields = (
        "provider",
        "model",
        "kind",
        "requests",
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "input_per_mtok",
        "cached_input_per_mtok",
        "output_per_mtok",
        "amount",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="amount")
    def amount(self, line: InvoiceLine) -> str:
        return display.dollars_exact(line.amount_nanos)  # line items keep sub-cent detail


class VoidForm(forms.Form):
    reason = forms.CharField(max_length=500)


class GenerateForm(forms.Form):
    period = forms.CharField(max_length=7, help_text="YYYY-MM")

    def clean_period(self) -> date:
        try:
            return datetime.strptime(self.cleaned_data["period"], "%Y-%m").date()
        except ValueError as exc:
            raise forms.ValidationError("Use YYYY-MM, e.g. 2026-10.") from exc


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    """Invoices change only through their actions (generate, finalize, void), never by editing:
    `change` permission is what those actions require; every field stays read-only."""

    list_display = [
        "__str__",
        "tenant",
        "month",
        "status",
        "total",
        "entries",
        "finalized",
        "due",
        "pdf_link",
        "void_link",
    ]
    list_filter = ["status", "period", "tenant"]
    search_fields = ["number", "tenant__name", "tenant__slug"]
    list_select_related = ["tenant"]
    inlines = [InvoiceLineInline]
    actions = ["regenerate_drafts", "finalize_drafts"]

    fieldsets = [
        (None, {"fields": ["number", "status", "tenant", "billed_to", "month", "currency"]}),
        ("Amounts", {"fields": ["subtotal", "total", "entries"]}),
        ("Issuer", {"fields": ["issuer"]}),
        ("Dates", {"fields": ["created", "finalized", "due", "voided", "void_reason"]}),
        ("Corrections", {"fields": ["replaces"]}),
    ]

    def get_readonly_fields(self, request: HttpRequest, obj: Invoice | None = None) -> list[str]:
        return [str(field) for _, options in self.fieldsets for field in options["fields"]]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        """Nothing on an invoice is edited here, so no Save buttons (its actions change it)."""
        no_save = {"show_save": False, "show_save_and_continue": False, "show_save_and_add_another": False}
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **no_save})

    @admin.display(description="month", ordering="period")
    def month(self, invoice: Invoice) -> str:
        return display.period(invoice.period)

    @admin.display(description="subtotal")
    def subtotal(self, invoice: Invoice) -> str:
        return display.dollars(invoice.subtotal_nanos)

    @admin.display(description="ledger entries", ordering="entry_count")
    def entries(self, invoice: Invoice) -> str:
        return display.count(invoice.entry_count)

    @admin.display(description="created", ordering="created_at")
    def created(self, invoice: Invoice) -> str:
        return display.timestamp(invoice.created_at)

    @admin.display(description="finalized", ordering="finalized_at")
    def finalized(self, invoice: Invoice) -> str:
        return display.timestamp(invoice.finalized_at)

    @admin.display(description="voided", ordering="voided_at")
    def voided(self, invoice: Invoice) -> str:
        return display.timestamp(invoice.voided_at)

    @admin.display(description="due", ordering="finalized_at")
    def due(self, invoice: Invoice) -> str:
        due = invoice_due_date(invoice)
        return "-" if due is None else f"{due:%Y-%m-%d}"

    @admin.display(description="issued by")
    def issuer(self, invoice: Invoice) -> str:
        name, address = invoice_issuer()
        return format_html("{}<br>{}", name, address) if address else name

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Invoice, form: forms.ModelForm, change: bool) -> None:
        pass  # nothing is editable; finalized invoices are immutable

    @admin.display(description="total", ordering="total_nanos")
    def total(self, invoice: Invoice) -> str:
        return display.dollars(invoice.total_nanos)

    @admin.display(description="PDF")
    def pdf_link(self, invoice: Invoice) -> str:
        return format_html(
            '<a href="{}">download</a>', reverse("admin:billing_invoice_pdf", args=[invoice.pk])
        )

    @admin.display(description="")
    def void_link(self, invoice: Invoice) -> str:
        if invoice.status != InvoiceStatus.FINALIZED:
            return ""
        return format_html('<a href="{}">void…</a>', reverse("admin:billing_invoice_void", args=[invoice.pk]))

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("<int:invoice_id>/pdf/", view(self.pdf_view), name="billing_invoice_pdf"),
            path("<int:invoice_id>/void/", view(self.void_view), name="billing_invoice_void"),
            path("usage/", view(self.usage_view), name="billing_tenant_usage"),
            path("generate/", view(self.generate_view), name="billing_invoice_generate"),
            *super().get_urls(),
        ]

    def _require(self, allowed: bool) -> None:
        if not allowed:
            raise PermissionDenied

    def pdf_view(self, request: HttpRequest, invoice_id: int) -> HttpResponse:
        self._require(self.has_view_permission(request))
        invoice = get_object_or_404(Invoice, pk=invoice_id)
        return document(invoice_pdf(invoice), "application/pdf", invoice_filename(invoice, "pdf"))

    def void_view(self, request: HttpRequest, invoice_id: int) -> HttpResponse:
        self._require(self.has_change_permission(request))
        invoice = get_object_or_404(Invoice, pk=invoice_id)
        form = VoidForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                replacement = invoice_void(
                    invoice=invoice, reason=form.cleaned_data["reason"], actor=actor_for(request)
                )
            except DomainError as error:
                messages.error(request, error.message)
            else:
                if replacement is None:
                    messages.success(
                        request, f"Voided {invoice}; its month has no usage, so it has no replacement."
                    )
                    return HttpResponseRedirect(reverse("admin:billing_invoice_change", args=[invoice.pk]))
                messages.success(request, f"Voided {invoice}; this is its replacement draft.")
                return HttpResponseRedirect(reverse("admin:billing_invoice_change", args=[replacement.pk]))
        return TemplateResponse(
            request,
            "admin/billing/void.html",
            self._context(request, f"Void {invoice}", form=form, invoice=invoice),
        )

    def usage_view(self, request: HttpRequest) -> HttpResponse:
        """All tenants ranked by cost for a month with a daily cost chart, CSV export, and a
        drill-down into one tenant (by model and by day), straight from the ledger."""
        self._require(self.has_view_permission(request))
        month = self._month_asked(request)
        tenant = self._tenant_asked(request)
        days = daily_cost(month=month, tenant=tenant)
        ranking = [] if tenant else usage_by_tenant(month=month)
        by_model = by_day = []
        if tenant is not None:
            start, end = month, month_bounds(month)[1].date() - timedelta(days=1)
            by_model = usage_summary(tenant=tenant, start=start, end=end, group_by="model")
            by_day = usage_summary(tenant=tenant, start=start, end=end, group_by="day")
        if request.GET.get("format") == "csv":
            return usage_csv(month=month, tenant=tenant, ranking=ranking, days=days)
        return TemplateResponse(
            request,
            "admin/billing/usage.html",
            self._context(
                request,
                f"Usage of {tenant}, {month:%Y-%m}" if tenant else f"Usage across tenants, {month:%Y-%m}",
                tenants=Tenant.objects.order_by("name"),
                tenant=tenant,
                month=f"{month:%Y-%m}",
                ranking=[ranking_row(row) for row in ranking],
                totals=ranking_totals(ranking),
                by_model=by_model,
                by_day=by_day,
                days=[(f"{day:%Y-%m-%d}", display.dollars(cost)) for day, cost in days],
                chart={
                    "labels": [f"{day:%m-%d}" for day, _ in days],
                    "values": [str(usd(cost)) for _, cost in days],
                    "label": f"Cost per day (USD), {month:%Y-%m}",
                },
            ),
        )

    def get_list_display(self, request: HttpRequest) -> Any:
        columns = list(super().get_list_display(request))
        return columns if self.has_change_permission(request) else [c for c in columns if c != "void_link"]

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        extra_context = {**(extra_context or {}), "can_generate": self.has_change_permission(request)}
        return super().changelist_view(request, extra_context)

    def _month_asked(self, request: HttpRequest) -> date:
        asked = request.GET.get("month", "")
        this_month = timezone.localdate().replace(day=1)
        if not asked:
            return this_month
        try:
            return datetime.strptime(asked, "%Y-%m").date()
        except ValueError:
            messages.error(
                request,
                f"“{asked}” is not a month: use YYYY-MM, e.g. {this_month:%Y-%m}. "
                f"Showing {this_month:%Y-%m}.",
            )
            return this_month

    def _tenant_asked(self, request: HttpRequest) -> Tenant | None:
        asked = request.GET.get("tenant", "")
        tenant = Tenant.objects.filter(pk=int(asked)).first() if asked.isdigit() else None
        if asked and tenant is None:
            messages.error(request, f"No tenant with id “{asked}”; showing all tenants.")
        return tenant

    def _context(self, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
        return {**self.admin_site.each_context(request), "opts": self.model._meta, "title": title, **extra}

    def generate_view(self, request: HttpRequest) -> HttpResponse:
        """Drafts for a month, for every tenant with usage in it (what beat does on the 1st)."""
        self._require(self.has_change_permission(request))
        form = GenerateForm(
            request.POST or None, initial={"period": f"{previous_month(timezone.localdate()):%Y-%m}"}
        )
        if request.method == "POST" and form.is_valid():
            try:
                invoices = invoices_generate_for_period(
                    period=form.cleaned_data["period"], actor=actor_for(request)
                )
            except DomainError as error:
                messages.error(request, error.message)
            else:
                messages.success(request, f"{len(invoices)} draft(s) generated or refreshed.")
                return HttpResponseRedirect(
                    reverse("admin:billing_invoice_changelist") + "?status__exact=draft"
                )
        return TemplateResponse(
            request, "admin/billing/generate.html", self._context(request, "Generate invoices", form=form)
        )

    @admin.action(description="Regenerate selected drafts from the ledger", permissions=["change"])
    def regenerate_drafts(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        regenerated = 0
        for invoice in queryset.filter(status=InvoiceStatus.DRAFT).select_related("tenant"):
            try:
                invoice_generate(tenant=invoice.tenant, period=invoice.period, actor=actor_for(request))
            except DomainError as error:
                self.message_user(request, error.message, messages.WARNING)
            else:
                regenerated += 1
        self.message_user(request, f"{regenerated} draft(s) regenerated.", messages.SUCCESS)

    @admin.action(description="Finalize selected drafts (assigns invoice numbers)", permissions=["change"])
    def finalize_drafts(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        finalized = 0
        for invoice in queryset.order_by("pk"):
            try:
                invoice_finalize(invoice=invoice, actor=actor_for(request))
            except DomainError as error:
                self.message_user(request, error.message, messages.WARNING)
            else:
                finalized += 1
        if finalized:
            self.message_user(request, f"{finalized} invoice(s) finalized.", messages.SUCCESS)
