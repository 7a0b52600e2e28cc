from __future__ import annotations

import fnmatch
from datetime import datetime

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone


def default_requests_per_minute() -> int:
    return settings.TENANT_DEFAULT_REQUESTS_PER_MINUTE


def default_tokens_per_minute() -> int:
    return settings.TENANT_DEFAULT_TOKENS_PER_MINUTE


def default_monthly_token_quota() -> int:
    return settings.TENANT_DEFAULT_MONTHLY_TOKEN_QUOTA


def default_allowed_models() -> list[str]:
    return list(settings.TENANT_DEFAULT_ALLOWED_MODELS)


class Tenant(models.Model):
    """A customer company. Quotas default from settings and are edited per tenant in the admin."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=64, unique=True)
    is_active = models.BooleanField(default=True, help_text="Inactive tenants get 403 on every request.")
    requests_per_minute = models.PositiveIntegerField(default=default_requests_per_minute)
    tokens_per_minute = models.PositiveIntegerField(default=default_tokens_per_minute)
    monthly_token_quota = models.PositiveBigIntegerField(
        null=True, blank=True, default=default_monthly_token_quota, help_text="Empty means unlimited."
    )
    allowed_models = ArrayField(
        models.CharField(max_length=100),
        default=default_allowed_models,
        blank=True,
        help_text="Model names or shell patterns (gpt-4o*, *); comma separated. Empty allows none.",
    )
    trace_retention_days = models.PositiveIntegerField(
        default=30,
        validators=[MinValueValidator(1), MaxValueValidator(3650)],
        help_text="Traces (with their spans and feedback) older than this are deleted; the ledger never is.",
    )
    store_trace_text = models.BooleanField(
        default=True,
        help_text="Keep each request's question and answer on its trace. Off: only their sizes and "
        "SHA-256 hashes are stored.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def allows_model(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.allowed_models)


class TenantOwnedModel(models.Model):
    """Base for every tenant-owned table: an explicit, indexed tenant foreign key."""

    tenant = models.ForeignKey(
        Tenant, on_delete=models.CASCADE, db_index=True, related_name="%(app_label)s_%(class)s_set"
    )

    class Meta:
        abstract = True


class Scope(models.TextChoices):
    CHAT = "chat", "Chat"
    DOCUMENTS = "documents", "Documents"
    BILLING_READ = "billing:read", "Billing (read)"
    TRACES_READ = "traces:read", "Traces and feedback (read)"
    # admin implies every other scope.
    ADMIN = "admin", "Admin"


class ApiKey(TenantOwnedModel):
    """A tenant's API key. Only the SHA-256 of the full key is stored; the key is shown once.

    The full key reads `<API_KEY_PREFIX>_<public_id>_<secret>`; `public_id` finds the row, the hash
    of the whole key is compared in constant time.
    """

    public_id = models.CharField(max_length=16, unique=True)
    name = models.CharField(max_length=100)
    secret_hash = models.CharField(max_length=64)
    scopes = ArrayField(models.CharField(max_length=32, choices=Scope.choices))
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Per-key limit; empty uses the tenant's requests per minute."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=200, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    rotated_from = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="rotated_to"
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.display_key})"

    @property
    def display_key(self) -> str:
        return f"{settings.API_KEY_PREFIX}_{self.public_id}_…"

    def is_usable_at(self, moment: datetime) -> bool:
        if self.revoked_at is not None and self.revoked_at <= moment:
            return False
        return self.expires_at is None or self.expires_at > moment

    @property
    def status(self) -> str:
        """active, expiring (rotated: it works until expires_at, its grace), expired or revoked."""
        now = timezone.now()
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        if self.expires_at is not None and hasattr(self, "rotated_to"):
            return "expiring"
        return "active"

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes


class AuditEvent(models.Model):
    """Who changed what, when: one row per operator-visible change (key revocations, label moves...)."""

    tenant = models.ForeignKey(Tenant, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    actor = models.CharField(max_length=200, help_text="user:<name>, api_key:<id>, cli or system")
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    changes = models.JSONField(default=dict, blank=True, help_text='{"field": [before, after]}')
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "-created_at"]),
            models.Index(fields=["target_type", "target_id"]),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.target_type}:{self.target_id} by {self.actor}"
