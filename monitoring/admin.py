"""Traces with their spans, read-only; feedback, read-only; the tenants' declared feedback metrics."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from monitoring.models import Feedback, FeedbackMetric, Span, Trace


class SpanInline(admin.TabularInline):
    model = Span
    fields = ("ordinal", "name", "status", "start_ms", "duration_ms", "attributes")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Trace)
class TraceAdmin(admin.ModelAdmin):
    list_display = [
        "created_at",
        "tenant",
        "endpoint",
        "status",
        "provider",
        "model",
        "prompt_name",
        "prompt_version",
        "cached",
        "latency_ms",
        "time_to_first_token_ms",
        "output_tokens",
        "attempts",
    ]
    list_filter = ["status", "refusal_reason", "endpoint", "provider", "cached", "streamed"]
    search_fields = ["request_id", "tenant__slug", "model", "prompt_name"]
    list_select_related = ["tenant"]
    date_hierarchy = "created_at"
    show_full_result_count = False
    inlines = [SpanInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(FeedbackMetric)
class FeedbackMetricAdmin(admin.ModelAdmin):
    list_display = ["name", "tenant", "kind", "scale_min", "scale_max", "created_at"]
    list_filter = ["kind"]
    search_fields = ["name", "tenant__slug"]
    list_select_related = ["tenant"]


@admin.register(Feedback)
class FeedbackAdmin(admin.ModelAdmin):
    list_display = ["created_at", "tenant", "name", "score", "end_user", "prompt_name", "prompt_version"]
    list_filter = ["name"]
    search_fields = ["tenant__slug", "end_user", "prompt_name", "comment"]
    list_select_related = ["tenant"]
    raw_id_fields = ["trace"]
    date_hierarchy = "created_at"
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
