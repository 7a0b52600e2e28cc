"""The operator's control plane for tenants: quotas, keys (created, shown once, revoked, rotated), audit."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html

from tenants.errors import DomainError
from tenants.models import ApiKey, AuditEvent, Scope, Tenant
from tenants.services import api_key_create, api_key_revoke, api_key_rotate, audit_event_record


def actor_for(request: HttpRequest) -> str:
    return f"user:{request.user.get_username()}"


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    fields = ("display_key", "name", "scopes", "status", "expires_at", "last_used_at", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # keys are created through "Create API key", which shows the secret once


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "slug",
        "is_active",
        "requests_per_minute",
        "tokens_per_minute",
        "monthly_token_quota",
        "created_at",
    ]
    list_filter = ["is_active", "created_at"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    readonly_fields = ["created_at", "updated_at", "create_key_link"]
    inlines = [ApiKeyInline]
    fieldsets = [
        (None, {"fields": ["name", "slug", "is_active", "create_key_link"]}),
        (
            "Quotas",
            {"fields": ["requests_per_minute", "tokens_per_minute", "monthly_token_quota", "allowed_models"]},
        ),
        ("Traces", {"fields": ["trace_retention_days", "store_trace_text"]}),
        ("Dates", {"fields": ["created_at", "updated_at"]}),
    ]

    @admin.display(description="API keys")
    def create_key_link(self, obj: Tenant) -> str:
        if obj.pk is None:
            return "Save the tenant first."
        url = reverse("admin:tenants_apikey_add") + f"?tenant={obj.pk}"
        return format_html('<a class="button" href="{}">Create API key</a>', url)

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
        "expires_at",
        "last_used_at",
        "created_at",
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
        "created_at",
        "created_by",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "rotated_from",
    ]
    readonly_fields = [
        "tenant",
        "display_key",
        "scopes",
        "status",
        "created_at",
        "created_by",
        "expires_at",
        "revoked_at",
        "last_used_at",
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
                return self.keys_shown_once(request, [(api_key, raw_key)], "API key created")
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "form": form,
            "title": "Create API key",
        }
        return TemplateResponse(request, "admin/tenants/apikey/create.html", context)

    def keys_shown_once(
        self, request: HttpRequest, keys: list[tuple[ApiKey, str]], title: str
    ) -> HttpResponse:
        """Rendered directly (never stored in messages or the session), and not cached."""
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "keys": keys,
            "title": title,
        }
        response = TemplateResponse(request, "admin/tenants/apikey/shown_once.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected keys now", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        revoked = 0
        for api_key in queryset.select_related("tenant"):
            try:
                api_key_revoke(tenant=api_key.tenant, api_key=api_key, actor=actor_for(request))
                revoked += 1
            except DomainError as exc:
                self.message_user(request, exc.message, messages.WARNING)
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)

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
        return self.keys_shown_once(request, rotated, "API keys rotated")

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
    list_display = ["created_at", "tenant", "actor", "action", "target_type", "target_id"]
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
