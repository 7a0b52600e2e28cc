"""Conversations and their messages, and each tenant's chat policy (fallback chain, routing, guards)."""

from __future__ import annotations

import uuid

from django.contrib.postgres.fields import ArrayField
from django.db import models

from tenants.models import Tenant, TenantOwnedModel


class GuardPolicy(models.TextChoices):
    OFF = "off", "Off"
    FLAG = "flag", "Flag (record in the trace)"
    BLOCK = "block", "Block (400)"


class RedactionCategory(models.TextChoices):
    EMAIL = "email", "E-mail addresses"
    PHONE = "phone", "Phone numbers"
    CARD = "card", "Card numbers"
    SECRET = "secret", "API-key-like strings"


def all_redactions() -> list[str]:
    return list(RedactionCategory.values)


class ChatSettings(models.Model):
    """How a tenant's chat requests are served. Created with defaults on first use."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="chat_settings")
    fallback_chain = ArrayField(
        models.CharField(max_length=120),
        default=list,
        blank=True,
        help_text="Ordered provider:model entries, e.g. openai:gpt-4o-mini,anthropic:claude-haiku-4-5,"
        "local:local. "
        "Empty: the deployment default (CHAT_DEFAULT_FALLBACK_CHAIN).",
    )
    routing_enabled = models.BooleanField(default=False, help_text="Send simple requests to the cheap model.")
    routing_cheap_model = models.CharField(max_length=120, blank=True, help_text="provider:model")
    routing_max_chars = models.PositiveIntegerField(
        default=400, help_text="Only messages this short are simple."
    )
    routing_complex_keywords = ArrayField(
        models.CharField(max_length=50),
        default=list,
        blank=True,
        help_text="Words that mark a request as complex (e.g. analyze, code, prove); comma separated.",
    )
    cache_enabled = models.BooleanField(
        default=True, help_text="Exact-match response cache (low temperature)."
    )
    cache_ttl_seconds = models.PositiveIntegerField(default=3600)
    max_input_chars = models.PositiveIntegerField(default=32_000)
    injection_policy = models.CharField(max_length=8, choices=GuardPolicy.choices, default=GuardPolicy.FLAG)
    redact_output = ArrayField(
        models.CharField(max_length=10, choices=RedactionCategory.choices), default=all_redactions, blank=True
    )

    class Meta:
        verbose_name_plural = "chat settings"

    def __str__(self) -> str:
        return f"chat settings of {self.tenant}"


class Conversation(TenantOwnedModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    end_user = models.CharField(max_length=200, blank=True)
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["tenant", "-updated_at"], name="conversation_tenant_recent")]

    def __str__(self) -> str:
        return self.title or str(self.id)


class Message(models.Model):
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=10)
    content = models.TextField()
    tokens = models.PositiveIntegerField(default=0)
    request_id = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "created_at", "id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"
