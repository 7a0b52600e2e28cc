"""The operator's control plane for tenants: quotas, keys (created, shown once, revoked, rotated), audit."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from billing.selectors import (
    BUDGET_BLOCKED,
    BUDGET_OK,
    BUDGET_WARNING,
    BUDGET_WARNING_PERCENT,
    current_period_relation,
    month_bounds,
    tenant_budget_columns,
)
from tenants import admin_display as display
from tenants.errors import DomainError
from tenants.models import ApiKey, AuditEvent, Scope, Tenant
from tenants.services import api_key_create, api_key_revoke, api_key_rotate, audit_event_record


def actor_for(request: HttpRequest) -> str:
    return f"user:{request.user.get_username()}"


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    fields = ("display_key", "name", "scopes", "status", "expires", "last_used", "created")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # keys are created through "Create API key", which shows the secret once

    @admin.display(description="expires")
    def expires(self, api_key: ApiKey) -> str:
        return display.timestamp(api_key.expires_at)

    @admin.display(description="last used")
    def last_used(self, api_key: ApiKey) -> str:
        return display.timestamp(api_key.last_used_at)

    @admin.display(description="created")
    def created(self, api_key: ApiKey) -> str:
        return display.timestamp(api_key.created_at)


class BudgetStateFilter(admin.SimpleListFilter):
    title = "budget this month"
    parameter_name = "budget_state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            (str(BUDGET_OK), "OK"),
            (str(BUDGET_WARNING), f"≥ {BUDGET_WARNING_PERCENT}%"),
            (str(BUDGET_BLOCKED), "Blocked"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        return queryset.filter(budget_state=int(value)) if value and value.isdigit() else queryset


class BudgetColumns:
    """Sortable money columns over the annotations of billing.selectors.budget_columns."""

    @admin.display(description="spent this month", ordering="month_spent")
    def month_spent_display(self, obj: Any) -> str:
        return display.dollars(obj.month_spent)

    @admin.display(description="monthly budget", ordering="month_limit")
    def month_limit_display(self, obj: Any) -> str:
        return display.dollars(obj.month_limit)

    @admin.display(description="% used", ordering="percent_used")
    def percent_used_display(self, obj: Any) -> str:
        return display.percent(obj.percent_used)

    @admin.display(description="spent today", ordering="day_spent")
    def day_spent_display(self, obj: Any) -> str:
        return display.dollars(obj.day_spent)

    @admin.display(description="budget state", ordering="budget_state")
    def budget_state_display(self, obj: Any) -> str:
        return display.budget_state(obj.budget_state)


class TenantAddForm(forms.ModelForm):
    """Adding a tenant can set its budget and create its first key in the same step."""

    monthly_budget_usd = forms.DecimalField(
        required=False,
        min_value=0,
        max_digits=12,
        decimal_places=2,
        label="Monthly budget (USD)",
        help_text="Optional; empty: no monthly budget.",
    )
    daily_budget_usd = forms.DecimalField(
        required=False,
        min_value=0,
        max_digits=12,
        decimal_places=2,
        label="Daily budget (USD)",
        help_text="Optional; empty: no daily budget.",
    )
    first_key_name = forms.CharField(
        required=False,
        max_length=100,
        label="First API key",
        help_text="Optional: a name creates a key, shown once after saving.",
    )
    first_key_scopes = forms.MultipleChoiceField(
        required=False,
        choices=Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        initial=[Scope.CHAT],
        label="Its scopes",
    )

    class Meta:
        model = Tenant
        fields = ["name", "slug"]  # the admin adds the fieldsets' fields

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("first_key_name") and not cleaned.get("first_key_scopes"):
            self.add_error("first_key_scopes", "Choose at least one scope for the key.")
        return cleaned


SHOWN_ONCE_SESSION_KEY = "api_keys_shown_once"


def keys_to_show_once(request: HttpRequest, keys: list[tuple[ApiKey, str]]) -> None:
    """Kept in the server-side session until the next page shows them (post/redirect/get)."""
    request.session[SHOWN_ONCE_SESSION_KEY] = [[api_key.pk, raw_key] for api_key, raw_key in keys]


@admin.register(Tenant)
class TenantAdmin(BudgetColumns, admin.ModelAdmin):
    list_display = [
        "name",
        "slug",
        "is_active",
        "month_spent_display",
        "month_limit_display",
        "percent_used_display",
        "day_spent_display",
        "budget_state_display",
    ]
    list_filter = ["is_active", BudgetStateFilter, "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["created", "updated"]
    inlines = [ApiKeyInline]
    fieldsets = [
        (None, {"fields": ["name", "slug", "is_active"]}),
        (
            "Quotas",
            {"fields": ["requests_per_minute", "tokens_per_minute", "monthly_token_quota", "allowed_models"]},
        ),
        ("Traces", {"fields": ["trace_retention_days", "store_trace_text"]}),
        ("Dates", {"fields": ["created", "updated"]}),
    ]
    add_fieldsets = [
        (None, {"fields": ["name", "slug", "is_active"]}),
        ("Budget", {"fields": ["monthly_budget_usd", "daily_budget_usd"]}),
        ("First API key", {"fields": ["first_key_name", "first_key_scopes"]}),
        (
            "Quotas",
            {"fields": ["requests_per_minute", "tokens_per_minute", "monthly_token_quota", "allowed_models"]},
        ),
        ("Traces", {"fields": ["trace_retention_days", "store_trace_text"]}),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        today = timezone.localdate()
        return (
            super()
            .get_queryset(request)
            .annotate(current_period=current_period_relation(prefix="", today=today))
            .annotate(**tenant_budget_columns(budget="budget__", today=today))
        )

    def get_fieldsets(self, request: HttpRequest, obj: Tenant | None = None) -> Any:
        return self.add_fieldsets if obj is None else self.fieldsets

    def get_form(
        self, request: HttpRequest, obj: Tenant | None = None, change: bool = False, **kwargs: Any
    ) -> Any:
        if obj is None:
            kwargs["form"] = TenantAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_inlines(self, request: HttpRequest, obj: Tenant | None) -> list[Any]:
        return [] if obj is None else self.inlines

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: Tenant) -> str:
        return display.timestamp(obj.created_at)

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, obj: Tenant) -> str:
        return display.timestamp(obj.updated_at)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        tenant = self.get_object(request, object_id)
        if tenant is not None:
            extra_context = {
                **(extra_context or {}),
                "month_panel": tenant_month_panel(tenant=tenant, request=request),
                "can_add_key": self.admin_site._registry[ApiKey].has_add_permission(request),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: Tenant, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if change and form.changed_data:
            audit_event_record(
                tenant=obj,
                actor=actor_for(request),
                action="tenant.update",
                target=obj,
                changes=form_changes(form),
            )
        elif not change:
            audit_event_record(tenant=obj, actor=actor_for(request), action="tenant.create", target=obj)
            self._add_budget_and_key(request, obj, form.cleaned_data)

    def _add_budget_and_key(self, request: HttpRequest, tenant: Tenant, data: dict[str, Any]) -> None:
        from billing.services import budget_update

        budget = {
            field: data[field]
            for field in ("monthly_budget_usd", "daily_budget_usd")
            if data.get(field) is not None
        }
        if budget:
            budget_update(tenant=tenant, actor=actor_for(request), **budget)
        if data.get("first_key_name"):
            created = api_key_create(
                tenant=tenant,
                name=data["first_key_name"],
                scopes=data["first_key_scopes"],
                actor=actor_for(request),
            )
            keys_to_show_once(request, [created])

    def response_add(
        self, request: HttpRequest, obj: Tenant, post_url_continue: str | None = None
    ) -> HttpResponse:
        if SHOWN_ONCE_SESSION_KEY in request.session:
            self.message_user(request, f"Tenant {obj} added.", messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:tenants_apikey_shown"))
        return super().response_add(request, obj, post_url_continue)


def _link(
    request: HttpRequest | None, model: type[Any], view: str, label: str, query: str = "", args: Any = None
) -> str:
    """A link to an admin page, or nothing when the user may not open it."""
    model_admin = admin.site._registry.get(model)
    if request is None or model_admin is None or not model_admin.has_view_permission(request):
        return ""
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args) + query
    return format_html('<li><a href="{}">{}</a></li>', url, label)


def tenant_month_panel(*, tenant: Tenant, request: HttpRequest | None) -> str:
    """Spend bar, the month's alerts and refusals, and links to everything the tenant owns."""
    from billing.models import BudgetAlert, Invoice, TenantBudget
    from chat.models import ChatSettings, Document
    from monitoring.models import Trace, TraceStatus

    today = timezone.localdate()
    month = today.replace(day=1)
    row = (
        Tenant.objects.filter(pk=tenant.pk)
        .annotate(current_period=current_period_relation(prefix="", today=today))
        .annotate(**tenant_budget_columns(budget="budget__", today=today))
        .values("month_spent", "month_limit", "day_spent", "budget_state")
        .get()
    )
    start, end = month_bounds(month)
    refusals = Trace.objects.filter(
        tenant=tenant, created_at__gte=start, created_at__lt=end, status=TraceStatus.REFUSED
    ).count()
    alerts = BudgetAlert.objects.filter(tenant=tenant).order_by("-created_at")[:5]
    of_tenant = f"?tenant__id__exact={tenant.pk}"
    settings_row = ChatSettings.objects.filter(tenant=tenant).only("pk").first()
    budget_row = TenantBudget.objects.filter(tenant=tenant).only("pk").first()
    links = [
        _link(request, Trace, "changelist", "Traces", of_tenant),
        _link(request, Trace, "changelist", "Refused requests", f"{of_tenant}&status__exact=refused"),
        _link(request, Invoice, "changelist", "Invoices", of_tenant),
        _link(request, Document, "changelist", "Documents", of_tenant),
        _link(request, ApiKey, "changelist", "API keys", of_tenant),
        _link(request, ChatSettings, "change", "Chat settings", args=[settings_row.pk])
        if settings_row
        else "",
        _link(request, TenantBudget, "change", "Budget", args=[budget_row.pk]) if budget_row else "",
    ]
    return format_html(
        '<div class="tenant-month"><p>{} ({}). Spent today: {}.</p>'
        "<p>Refused requests this month: {}.</p>"
        "<p>Latest budget alerts:</p><ul>{}</ul><ul>{}</ul></div>",
        display.spend_bar(row["month_spent"], row["month_limit"]),
        display.budget_state(row["budget_state"]),
        display.dollars(row["day_spent"]),
        display.count(refusals),
        format_html_join(
            "",
            "<li>{}: {}% of {} budget reached ({} spent)</li>",
            (
                (
                    display.timestamp(a.created_at),
                    a.threshold_percent,
                    display.period(a.month),
                    display.dollars(a.spent_nanos),
                )
                for a in alerts
            ),
        )
        or format_html("<li>{}</li>", "None."),
        format_html_join("", "{}", ((link,) for link in links if link)),
    )


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | list | type(None)) else str(value)


def form_changes(form: forms.ModelForm) -> dict[str, list[Any]]:
    """An admin form's edits as an audit record: {"field": [before, after]}."""
    return {
        field: [_jsonable(form.initial.get(field)), _jsonable(form.cleaned_data.get(field))]
        for field in form.changed_data
    }


class ApiKeyCreateForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.order_by("name"))
    name = forms.CharField(max_length=100)
    scopes = forms.MultipleChoiceField(
        choices=Scope.choices, widget=forms.CheckboxSelectMultiple, initial=[Scope.CHAT]
    )
    expires_at = forms.DateTimeField(required=False, help_text="Optional, e.g. 2027-01-31 23:59 (UTC).")
    requests_per_minute = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=1_000_000,
        help_text="Optional per-key limit; empty uses the tenant's.",
    )


class KeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> QuerySet[ApiKey]:
        now = timezone.now()
        if self.value() == "revoked":
            return queryset.filter(revoked_at__lte=now)
        if self.value() == "expired":
            return queryset.filter(expires_at__lte=now).exclude(revoked_at__lte=now)
        if self.value() == "active":
            return queryset.exclude(revoked_at__lte=now).exclude(expires_at__lte=now)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "display_key",
        "name",
        "tenant",
        "scopes",
        "status",
        "expires",
        "last_used",
    ]
    list_filter = [KeyStatusFilter, "tenant", "created_at"]
    search_fields = ["name", "public_id", "tenant__name", "tenant__slug"]
    list_select_related = ["tenant"]
    fields = [
        "tenant",
        "display_key",
        "name",
        "scopes",
        "requests_per_minute",
        "status",
        "created",
        "created_by",
        "expires",
        "revoked",
        "last_used",
        "rotated_from",
    ]
    readonly_fields = [
        "tenant",
        "display_key",
        "scopes",
        "status",
        "created",
        "created_by",
        "expires",
        "revoked",
        "last_used",
        "rotated_from",
    ]
    actions = ["revoke_keys", "rotate_keys"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # revoke instead: the row is the audit trail of the key

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ApiKeyCreateForm(request.POST or None, initial={"tenant": request.GET.get("tenant")})
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                api_key, raw_key = api_key_create(
                    tenant=data["tenant"],
                    name=data["name"],
                    scopes=data["scopes"],
                    actor=actor_for(request),
                    expires_at=data["expires_at"],
                    requests_per_minute=data["requests_per_minute"],
                )
            except DomainError as exc:
                form.add_error(exc.param if exc.param in form.fields else None, exc.message)
            else:
                keys_to_show_once(request, [(api_key, raw_key)])
                return HttpResponseRedirect(reverse("admin:tenants_apikey_shown"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "form": form,
            "title": "Create API key",
        }
        return TemplateResponse(request, "admin/tenants/apikey/create.html", context)

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("shown-once/", view(self.shown_once_view), name="tenants_apikey_shown"),
            path("<int:key_id>/revoke/", view(self.revoke_view), name="tenants_apikey_revoke"),
            *super().get_urls(),
        ]

    def shown_once_view(self, request: HttpRequest) -> HttpResponse:
        """Shows the keys just created, taken out of the session: a reload finds them gone and
        says so, and mints nothing."""
        if not (self.has_add_permission(request) or self.has_change_permission(request)):
            raise PermissionDenied
        stored = request.session.pop(SHOWN_ONCE_SESSION_KEY, [])
        by_pk = ApiKey.objects.select_related("tenant").in_bulk([pk for pk, _ in stored])
        keys = [(by_pk[pk], raw_key) for pk, raw_key in stored if pk in by_pk]
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "keys": keys,
            "title": "Copy the new API key" if len(keys) == 1 else "Copy the new API keys",
        }
        response = TemplateResponse(request, "admin/tenants/apikey/shown_once.html", context)
        response["Cache-Control"] = "no-store"
        return response

    def revoke_view(self, request: HttpRequest, key_id: int) -> HttpResponse:
        """ "Revoke now" asks first: a GET shows what will stop working, the POST revokes."""
        api_key = get_object_or_404(ApiKey.objects.select_related("tenant"), pk=key_id)
        if not self.has_change_permission(request, api_key):
            raise PermissionDenied
        change_url = reverse("admin:tenants_apikey_change", args=[api_key.pk])
        if request.method == "POST":
            try:
                api_key_revoke(tenant=api_key.tenant, api_key=api_key, actor=actor_for(request))
            except DomainError as exc:
                self.message_user(request, exc.message, messages.WARNING)
            else:
                self.message_user(request, f"Revoked {api_key}.", messages.SUCCESS)
            return HttpResponseRedirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "keys": [api_key],
            "title": f"Revoke {api_key}?",
            "cancel_url": change_url,
        }
        return TemplateResponse(request, "admin/tenants/apikey/revoke_confirm.html", context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        api_key = self.get_object(request, object_id)
        can_revoke = (
            api_key is not None
            and api_key.status in ("active", "expiring")
            and self.has_change_permission(request, api_key)
        )
        extra_context = {**(extra_context or {}), "can_revoke": can_revoke}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="expires", ordering="expires_at")
    def expires(self, api_key: ApiKey) -> str:
        return display.timestamp(api_key.expires_at)

    @admin.display(description="last used", ordering="last_used_at")
    def last_used(self, api_key: ApiKey) -> str:
        return display.timestamp(api_key.last_used_at)

    @admin.display(description="created", ordering="created_at")
    def created(self, api_key: ApiKey) -> str:
        return display.timestamp(api_key.created_at)

    @admin.display(description="revoked", ordering="revoked_at")
    def revoked(self, api_key: ApiKey) -> str:
        return display.timestamp(api_key.revoked_at)

    @admin.action(description="Revoke selected keys now", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> HttpResponse | None:
        keys = list(queryset.select_related("tenant"))
        if request.POST.get("confirm") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "keys": keys,
                "title": "Revoke these API keys?",
                "action": "revoke_keys",
                "cancel_url": reverse("admin:tenants_apikey_changelist"),
            }
            return TemplateResponse(request, "admin/tenants/apikey/revoke_confirm.html", context)
        revoked = 0
        for api_key in keys:
            try:
                api_key_revoke(tenant=api_key.tenant, api_key=api_key, actor=actor_for(request))
                revoked += 1
            except DomainError as exc:
                self.message_user(request, exc.message, messages.WARNING)
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)
        return None

    @admin.action(
        description="Rotate selected keys (old keys keep working for the grace period)",
        permissions=["change"],
    )
    def rotate_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> HttpResponse | None:
        rotated = []
        for api_key in queryset.select_related("tenant"):
            try:
                rotated.append(
                    api_key_rotate(tenant=api_key.tenant, api_key=api_key, actor=actor_for(request))
                )
            except DomainError as exc:
                self.message_user(request, exc.message, messages.WARNING)
        if not rotated:
            return None
        keys_to_show_once(request, rotated)
        return HttpResponseRedirect(reverse("admin:tenants_apikey_shown"))

    def save_model(self, request: HttpRequest, obj: ApiKey, form: forms.ModelForm, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if form.changed_data:
            audit_event_record(
                tenant=obj.tenant,
                actor=actor_for(request),
                action="api_key.update",
                target=obj,
                changes=form_changes(form),
            )


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    list_display = ["created", "tenant", "actor", "action", "target_type", "target_id"]
    list_filter = ["action", "target_type", "tenant"]
    search_fields = ["actor", "action", "target_id"]
    date_hierarchy = "created_at"
    list_select_related = ["tenant"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="when", ordering="created_at")
    def created(self, event: AuditEvent) -> str:
        return display.timestamp(event.created_at)
