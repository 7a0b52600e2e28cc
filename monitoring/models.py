"""Traces (one per request) with their spans."""

from __future__ import annotations

import uuid

from django.db import models

from tenants.models import TenantOwnedModel


class TraceStatus(models.TextChoices):
    OK = "ok", "OK"
    ERROR = "error", "Error"
    REFUSED = "refused", "Refused (guard, budget, rate limit)"


class RefusalReason(models.TextChoices):
    """Why a request was refused; the same names label llm_refusals_total."""

    BUDGET = "budget", "Budget exhausted"
    RATE_LIMIT_REQUESTS = "rate_limit_requests", "Requests per minute"
    RATE_LIMIT_TOKENS = "rate_limit_tokens", "Tokens per minute"
    MONTHLY_QUOTA = "monthly_quota", "Monthly token quota"
    GUARD = "guard", "Input guard"
    MODEL_NOT_ALLOWED = "model_not_allowed", "Model not allowed"
    OTHER = "other", "Other"


# What experiment results aggregate of a trace (monitoring/experiments.py).
EXPERIMENT_COLUMNS = [
    "status",
    "end_user",
    "latency_ms",
    "time_to_first_token_ms",
    "input_tokens",
    "output_tokens",
    "cost_nanos",
]


class Trace(TenantOwnedModel):
    """One chat request end to end: what was asked of which model, what it cost and how long it took."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    request_id = models.CharField(max_length=100)
    endpoint = models.CharField(max_length=50)
    status = models.CharField(max_length=8, choices=TraceStatus.choices)
    error = models.CharField(max_length=500, blank=True)
    refusal_reason = models.CharField(max_length=32, blank=True, choices=RefusalReason.choices)
    provider = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=100, blank=True)
    prompt_name = models.CharField(max_length=100, blank=True)
    prompt_version = models.PositiveIntegerField(null=True, blank=True)
    prompt_variant = models.BigIntegerField(null=True, blank=True)
    end_user = models.CharField(max_length=200, blank=True)
    conversation_id = models.UUIDField(null=True, blank=True)
    cached = models.BooleanField(default=False)
    streamed = models.BooleanField(default=False)
    input_tokens = models.PositiveIntegerField(default=0)
    cached_input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost_nanos = models.BigIntegerField(default=0)
    latency_ms = models.FloatField(default=0)
    time_to_first_token_ms = models.FloatField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    # The question and the answer the client got; empty when the tenant keeps no text
    # (Tenant.store_trace_text), when the sizes (UTF-8 bytes) and SHA-256 hashes still are.
    request_text = models.TextField(blank=True)
    answer_text = models.TextField(blank=True)
    request_bytes = models.PositiveIntegerField(null=True, blank=True)
    answer_bytes = models.PositiveIntegerField(null=True, blank=True)
    request_sha256 = models.CharField(max_length=64, blank=True)
    answer_sha256 = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="trace_tenant_time"),
            # Feedback names a trace by its request id too (a completion's id is chatcmpl-<request id>).
            models.Index(fields=["tenant", "request_id"], name="trace_tenant_request"),
            models.Index(fields=["tenant", "conversation_id"], name="trace_tenant_conversation"),
            # Experiment results (monitoring/experiments.py) aggregate a variant's traces: partial,
            # because most traces are of no experiment, and covering what is aggregated, so they are
            # read from the index alone (an index-only scan) rather than from the wide heap rows.
            models.Index(
                fields=["tenant", "prompt_variant", "created_at"],
                name="trace_tenant_variant",
                condition=models.Q(prompt_variant__isnull=False),
                include=EXPERIMENT_COLUMNS,
            ),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint} {self.status} {self.model}"


class Span(models.Model):
    """One step of a trace: guard, prompt, cache, retrieval, a provider attempt, settle..."""

    trace = models.ForeignKey(Trace, on_delete=models.CASCADE, related_name="spans")
    ordinal = models.PositiveSmallIntegerField()
    name = models.CharField(max_length=50)
    status = models.CharField(max_length=8, default="ok")
    start_ms = models.FloatField(help_text="Offset from the start of the request.")
    duration_ms = models.FloatField()
    attributes = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["trace", "ordinal"]

    def __str__(self) -> str:
        return f"{self.name} ({self.duration_ms:.1f} ms)"


class FeedbackKind(models.TextChoices):
    THUMBS = "thumbs", "Thumbs (-1 or 1)"
    SCALE = "scale", "Scale (a number between a minimum and a maximum)"


class FeedbackMetric(TenantOwnedModel):
    """A feedback name the tenant declared, and what a score of it may be. An undeclared name is
    thumbs (-1 or 1): "rating", the default name, needs no declaration."""

    name = models.SlugField(max_length=64)
    kind = models.CharField(max_length=8, choices=FeedbackKind.choices, default=FeedbackKind.THUMBS)
    scale_min = models.FloatField(null=True, blank=True)
    scale_max = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="feedback_metric_unique_name"),
            models.CheckConstraint(
                condition=models.Q(kind="thumbs") | models.Q(scale_min__lt=models.F("scale_max")),
                name="feedback_metric_scale_bounds",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Feedback(TenantOwnedModel):
    """An end user's score of one answer (a trace) on one metric. One per (trace, name, end user):
    a repeat updates it. The trace's prompt, version and variant are copied, so experiment results
    aggregate feedback without joining traces."""

    trace = models.ForeignKey(Trace, on_delete=models.CASCADE, related_name="feedback")
    name = models.SlugField(max_length=64, default="rating")
    score = models.FloatField()
    comment = models.TextField(blank=True)
    end_user = models.CharField(max_length=200, blank=True)
    prompt_name = models.CharField(max_length=100, blank=True)
    prompt_version = models.PositiveIntegerField(null=True, blank=True)
    prompt_variant = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["trace", "name", "end_user"], name="feedback_one_per_user"),
        ]
        indexes = [
            models.Index(fields=["tenant", "-created_at"], name="feedback_tenant_time"),
            models.Index(fields=["tenant", "prompt_variant", "name"], name="feedback_tenant_variant"),
        ]

    def __str__(self) -> str:
        return f"{self.name}={self.score:g}"
