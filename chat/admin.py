"""Per-tenant chat policy (fallback chain, routing, caches, guards, RAG), circuit states, conversations,
documents (status, progress, re-ingest, search as a tenant)."""

from __future__ import annotations

import contextlib
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.html import format_html, format_html_join
from django.utils.text import Truncator

from chat.documents import document_delete, document_reingest
from chat.models import ChatSettings, Chunk, Conversation, Document, Message
from chat.retrieval import retrieve, tenant_vector_indexes
from chat.selectors import known_circuits
from chat.services import chat_settings_update
from tenants.admin import actor_for
from tenants.errors import DomainError, NotFoundError
from tenants.models import Tenant


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
            "rag_enabled",
            "rag_text_search_config",
            "rag_semantic_weight",
            "rag_lexical_weight",
            "semantic_cache_enabled",
            "semantic_cache_threshold",
            "semantic_cache_multi_turn",
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
        (
            "Documents (RAG) and the semantic cache",
            {
                "fields": [
                    "rag_enabled",
                    "rag_text_search_config",
                    "rag_semantic_weight",
                    "rag_lexical_weight",
                    "semantic_cache_enabled",
                    "semantic_cache_threshold",
                    "semantic_cache_multi_turn",
                ]
            },
        ),
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

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        can_see = request.user.has_perm("chat.view_circuits")
        return super().changelist_view(request, {**(extra_context or {}), "can_view_circuits": can_see})

    def circuits_view(self, request: HttpRequest) -> HttpResponse:
        if not request.user.has_perm("chat.view_circuits"):
            raise PermissionDenied
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


CHUNK_PREVIEW_COUNT = 20


class DocumentSearchForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.order_by("name"))
    query = forms.CharField(max_length=4000, widget=forms.TextInput(attrs={"size": 80}))
    k = forms.IntegerField(min_value=1, max_value=50, initial=10)


@admin.register(Document)
class DocumentAdmin(admin.ModelAdmin):
    list_display = [
        "title",
        "tenant",
        "status",
        "progress_percent",
        "chunk_count",
        "size_bytes",
        "created_at",
    ]
    list_filter = ["status", "tenant"]
    search_fields = ["title", "source_filename", "sha256", "tenant__slug"]
    list_select_related = ["tenant"]
    readonly_fields = [
        "id",
        "tenant",
        "source_filename",
        "content_type",
        "size_bytes",
        "sha256",
        "status",
        "error",
        "embedder",
        "chunk_count",
        "chunks_embedded",
        "progress_percent",
        "created_at",
        "updated_at",
        "ingested_at",
        "first_chunks",
    ]
    fields = ["title", *readonly_fields]
    actions = ["reingest"]
    change_list_template = "admin/chat/document/change_list.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Document]:
        return super().get_queryset(request).defer("content")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # documents come in through the API or `manage.py ingest`

    @admin.display(description="progress")
    def progress_percent(self, document: Document) -> str:
        return f"{document.progress:.0%}"

    @admin.display(description=f"first {CHUNK_PREVIEW_COUNT} chunks")
    def first_chunks(self, document: Document) -> str:
        chunks = Chunk.objects.filter(tenant_id=document.tenant_id, document=document).only(
            "ordinal", "token_count", "text"
        )[:CHUNK_PREVIEW_COUNT]
        return format_html(
            "<table>{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}&nbsp;tokens</td><td>{}</td></tr>",
                ((chunk.ordinal, chunk.token_count, Truncator(chunk.text).chars(300)) for chunk in chunks),
            ),
        )

    def delete_model(self, request: HttpRequest, obj: Document) -> None:
        # Through the service: the tenant's semantic cache and vector index must follow.
        with contextlib.suppress(NotFoundError):  # deleted meanwhile
            document_delete(tenant=obj.tenant, document_id=obj.pk)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        for document in queryset.select_related("tenant"):
            self.delete_model(request, document)

    @admin.action(description="Ingest the selected documents again", permissions=["change"])
    def reingest(self, request: HttpRequest, queryset: QuerySet[Document]) -> None:
        queued, busy = 0, 0
        for document in queryset.select_related("tenant"):
            try:
                document_reingest(tenant=document.tenant, document_id=document.pk)
            except DomainError:  # queued or being ingested (maybe since the list was shown), or gone
                busy += 1
                continue
            queued += 1
        self.message_user(request, f"{queued} document(s) queued for ingestion.", messages.SUCCESS)
        if busy:
            self.message_user(
                request, f"{busy} document(s) skipped: already being ingested.", messages.WARNING
            )

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> HttpResponse:
        can_search = request.user.has_perm("chat.search_as_tenant")
        return super().changelist_view(request, {**(extra_context or {}), "can_search": can_search})

    def get_urls(self) -> list[URLPattern]:
        return [
            path("search/", self.admin_site.admin_view(self.search_view), name="chat_document_search"),
            *super().get_urls(),
        ]

    def search_view(self, request: HttpRequest) -> HttpResponse:
        """Runs a retrieval query as a tenant: what chat would put into the prompt, with scores."""
        if not request.user.has_perm("chat.search_as_tenant"):
            raise PermissionDenied
        form = DocumentSearchForm(request.GET or None)
        results, strategy, query_ms = None, "", 0.0
        if form.is_valid():
            tenant = form.cleaned_data["tenant"]
            found = retrieve(
                tenant_id=tenant.pk,
                query=form.cleaned_data["query"],
                k=form.cleaned_data["k"],
                min_score=-1.0,
            )
            results, query_ms = found.chunks, found.query_ms
            strategy = (
                "its own HNSW index"
                if tenant_vector_indexes().get(tenant.pk)
                else "exact search (all its chunks)"
            )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Search documents as a tenant",
            "form": form,
            "results": results,
            "strategy": strategy,
            "query_ms": query_ms,
        }
        return TemplateResponse(request, "admin/chat/document/search.html", context)
