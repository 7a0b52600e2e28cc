"""The operator's billing console: prices, budgets, the ledger, alerts, invoices and usage per tenant."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from billing.api import document
from billing.documents import format_usd, invoice_filename, invoice_pdf
from billing.models import (
    BudgetAlert,
    BudgetPeriod,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    ModelPrice,
    TenantBudget,
    UsageEntry,
)
from billing.selectors import usage_summary
from billing.services import (
    budget_update,
    invoice_finalize,
    invoice_generate,
    invoice_void,
    invoices_generate_for_period,
    model_price_add,
    previous_month,
)
from tenants.admin import actor_for
from tenants.errors import DomainError
from tenants.models import Tenant


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
class TenantBudgetAdmin(admin.ModelAdmin):
    list_display = ["tenant", "monthly_budget_usd", "daily_budget_usd", "hard_limit", "alert_thresholds"]
    list_filter = ["hard_limit"]
    search_fields = ["tenant__name", "tenant__slug"]
    readonly_fields = ["webhook_secret", "updated_at", "usage_link"]
    autocomplete_fields = ["tenant"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

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
class BudgetPeriodAdmin(ReadOnlyAdmin):
    list_display = ["tenant", "month", "spent", "reserved", "month_limit", "tokens_used", "day", "hard_limit"]
    list_filter = ["month"]
    search_fields = ["tenant__name", "tenant__slug"]
    list_select_related = ["tenant"]

    @admin.display(description="spent (USD)")
    def spent(self, period: BudgetPeriod) -> str:
        return format_usd(period.spent_nanos)

    @admin.display(description="reserved (USD)")
    def reserved(self, period: BudgetPeriod) -> str:
        return format_usd(period.reserved_nanos)

    @admin.display(description="budget (USD)")
    def month_limit(self, period: BudgetPeriod) -> str:
        return "-" if period.month_limit_nanos is None else format_usd(period.month_limit_nanos)


@admin.register(BudgetAlert)
class BudgetAlertAdmin(ReadOnlyAdmin):
    list_display = [
        "tenant",
        "month",
        "threshold_percent",
        "created_at",
        "email_sent_at",
        "webhook_sent_at",
        "webhook_attempts",
        "last_error",
    ]
    list_filter = ["threshold_percent", "month"]
    search_fields = ["tenant__name", "tenant__slug"]
    list_select_related = ["tenant"]


@admin.register(UsageEntry)
class UsageEntryAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "tenant",
        "request_id",
        "kind",
        "provider",
        "model",
        "input_tokens",
        "cached_input_tokens",
        "output_tokens",
        "cost",
        "prompt_name",
        "prompt_version",
    ]
    list_filter = ["kind", "provider", "model"]
    search_fields = ["request_id", "tenant__slug", "model"]
    list_select_related = ["tenant"]
    date_hierarchy = "created_at"
    show_full_result_count = False  # the ledger is large; no COUNT(*) over it per page

    @admin.display(description="cost (USD)")
    def cost(self, entry: UsageEntry) -> str:
        return format_usd(entry.cost_nanos)


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

    @admin.display(description="amount (USD)")
    def amount(self, line: InvoiceLine) -> str:
        return format_usd(line.amount_nanos)


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
        "period",
        "status",
        "total",
        "entry_count",
        "finalized_at",
        "pdf_link",
        "void_link",
    ]
    list_filter = ["status", "period", "tenant"]
    search_fields = ["number", "tenant__name", "tenant__slug"]
    list_select_related = ["tenant"]
    inlines = [InvoiceLineInline]
    actions = ["regenerate_drafts", "finalize_drafts"]

    def get_readonly_fields(self, request: HttpRequest, obj: Invoice | None = None) -> list[str]:
        return [field.name for field in Invoice._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Invoice, form: forms.ModelForm, change: bool) -> None:
        pass  # nothing is editable; finalized invoices are immutable

    @admin.display(description="total (USD)")
    def total(self, invoice: Invoice) -> str:
        return format_usd(invoice.total_nanos)

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
        """Usage of one tenant for a month, by model and by day, straight from the ledger."""
        self._require(self.has_view_permission(request))
        tenant_id = request.GET.get("tenant", "")
        tenant = Tenant.objects.filter(pk=int(tenant_id)).first() if tenant_id.isdigit() else None
        try:
            month = date.fromisoformat((request.GET.get("month") or "") + "-01")
        except ValueError:
            month = timezone.localdate().replace(day=1)
        end = (month.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
        by_model = by_day = []
        if tenant is not None:
            by_model = usage_summary(tenant=tenant, start=month, end=end, group_by="model")
            by_day = usage_summary(tenant=tenant, start=month, end=end, group_by="day")
        return TemplateResponse(
            request,
            "admin/billing/usage.html",
            self._context(
                request,
                "Usage per tenant",
                tenants=Tenant.objects.order_by("name"),
                tenant=tenant,
                month=f"{month:%Y-%m}",
                by_model=by_model,
                by_day=by_day,
            ),
        )

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
