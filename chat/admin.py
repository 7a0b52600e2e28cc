"""Per-tenant chat policy (fallback chain, routing, cache, guards), circuit states, conversations."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path

from chat.models import ChatSettings, Conversation, Message
from chat.selectors import known_circuits
from chat.services import chat_settings_update
from tenants.admin import actor_for
from tenants.errors import DomainError


class ChatSettingsForm(forms.ModelForm):
    class Meta:
        model = ChatSettings
        fields = [
            "tenant",
            "fallback_chain",
            "routing_enabled",
            "routing_cheap_model",
            "routing_max_chars",
            "routing_complex_keywords",
            "cache_enabled",
            "cache_ttl_seconds",
            "max_input_chars",
            "injection_policy",
            "redact_output",
        ]

    def clean(self) -> dict[str, Any]:
        from chat.services import validate_target

        cleaned = super().clean() or {}
        entries = list(cleaned.get("fallback_chain") or [])
        if cleaned.get("routing_cheap_model"):
            entries.append(cleaned["routing_cheap_model"])
        for entry in entries:
            try:
                validate_target(entry)
            except DomainError as error:
                raise forms.ValidationError(error.message) from error
        return cleaned


@admin.register(ChatSettings)
class ChatSettingsAdmin(admin.ModelAdmin):
    form = ChatSettingsForm
    list_display = ["tenant", "fallback_chain", "routing_enabled", "cache_enabled", "injection_policy"]
    list_filter = ["routing_enabled", "cache_enabled", "injection_policy"]
    search_fields = ["tenant__name", "tenant__slug"]
    autocomplete_fields = ["tenant"]
    fieldsets = [
        (None, {"fields": ["tenant"]}),
        ("Providers", {"fields": ["fallback_chain"]}),
        (
            "Routing of simple requests",
            {
                "fields": [
                    "routing_enabled",
                    "routing_cheap_model",
                    "routing_max_chars",
                    "routing_complex_keywords",
                ]
            },
        ),
        ("Cache", {"fields": ["cache_enabled", "cache_ttl_seconds"]}),
        ("Guards", {"fields": ["max_input_chars", "injection_policy", "redact_output"]}),
    ]

    def save_model(
        self, request: HttpRequest, obj: ChatSettings, form: forms.ModelForm, change: bool
    ) -> None:
        """Through the service: audited, and every worker sees the change within seconds."""
        if not change:
            ChatSettings.objects.get_or_create(tenant=obj.tenant)
        changes = {field: form.cleaned_data[field] for field in form.changed_data if field != "tenant"}
        obj.pk = chat_settings_update(tenant=obj.tenant, actor=actor_for(request), **changes).pk

    def get_urls(self) -> list[URLPattern]:
        return [
            path("circuits/", self.admin_site.admin_view(self.circuits_view), name="chat_circuits"),
            *super().get_urls(),
        ]

    def circuits_view(self, request: HttpRequest) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Provider circuit breakers",
            "circuits": known_circuits(),
        }
        return TemplateResponse(request, "admin/chat/circuits.html", context)


class MessageInline(admin.TabularInline):
    model = Message
    fields = ("created_at", "role", "content", "tokens", "request_id")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["id", "tenant", "title", "end_user", "updated_at"]
    list_filter = ["tenant"]
    search_fields = ["title", "end_user", "tenant__slug"]
    list_select_related = ["tenant"]
    readonly_fields = ["id", "tenant", "title", "end_user", "created_at", "updated_at"]
    inlines = [MessageInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
