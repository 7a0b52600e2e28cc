"""Prompt templates, their immutable versions, movable labels and A/B experiments."""

from __future__ import annotations

from typing import Any, NoReturn

from django.db import models
from django.db.models import Q

from tenants.models import Tenant

# Experiment assignment resolution: 10,000 buckets, 0.01 percent each.
ASSIGNMENT_BUCKETS = 10_000
PRODUCTION_LABEL = "production"


class TemplateKind(models.TextChoices):
    CHAT = "chat", "Chat (role messages)"
    TEXT = "text", "Text"


class PromptTemplate(models.Model):
    """A named prompt. Global (tenant empty: every tenant sees it) or a tenant's own, which overrides
    a global template of the same name for that tenant."""

    tenant = models.ForeignKey(
        Tenant,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="prompt_templates",
        help_text="Empty for a global template, available to every tenant.",
    )
    name = models.SlugField(max_length=100)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=8, choices=TemplateKind.choices, default=TemplateKind.CHAT)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "name"], name="prompt_name_unique_per_tenant"),
            models.UniqueConstraint(
                fields=["name"], condition=Q(tenant__isnull=True), name="prompt_name_unique_global"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.owner_label})"

    @property
    def owner_label(self) -> str:
        return "global" if self.tenant_id is None else f"tenant {self.tenant}"


class ImmutableQuerySet(models.QuerySet["PromptVersion"]):
    def update(self, **kwargs: Any) -> NoReturn:
        raise ImmutableVersionError("Prompt versions are immutable; create a new version instead.")

    def delete(self) -> NoReturn:
        raise ImmutableVersionError("Prompt versions are immutable and cannot be deleted.")


class ImmutableVersionError(Exception):
    pass


class PromptVersion(models.Model):
    """One immutable revision of a template. Saving an existing row, or updating or deleting through a
    queryset, raises; a database trigger (migration 0002) refuses UPDATE and DELETE from raw SQL too."""

    template = models.ForeignKey(PromptTemplate, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    messages = models.JSONField(null=True, blank=True, help_text='Chat: [{"role": ..., "content": ...}]')
    # NULL, not "", marks a chat version: the check constraint below wants exactly one of messages/text.
    text = models.TextField(null=True, blank=True, help_text="Text templates only.")  # noqa: DJ001
    variables = models.JSONField(default=dict, blank=True, help_text='{"name": default or null (required)}')
    model_config = models.JSONField(
        default=dict, blank=True, help_text="model, temperature, max_tokens, top_p"
    )
    message = models.CharField(max_length=500, blank=True, help_text="What changed and why.")
    author = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = ImmutableQuerySet.as_manager()

    class Meta:
        ordering = ["template", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["template", "number"], name="prompt_version_number_unique"),
            models.CheckConstraint(
                condition=(
                    Q(messages__isnull=False, text__isnull=True)
                    | Q(messages__isnull=True, text__isnull=False)
                ),
                name="prompt_version_messages_xor_text",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.template.name} v{self.number}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ImmutableVersionError("Prompt versions are immutable; create a new version instead.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise ImmutableVersionError("Prompt versions are immutable and cannot be deleted.")


class PromptLabel(models.Model):
    """A movable pointer (production, staging, any name) to one version of its template."""

    template = models.ForeignKey(PromptTemplate, on_delete=models.CASCADE, related_name="labels")
    name = models.SlugField(max_length=50)
    version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="labels")
    updated_at = models.DateTimeField(auto_now=True)
    updated_by = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["template", "name"]
        constraints = [models.UniqueConstraint(fields=["template", "name"], name="prompt_label_unique")]

    def __str__(self) -> str:
        return f"{self.template.name}@{self.name} -> v{self.version.number}"


class ExperimentStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"


class Experiment(models.Model):
    """An A/B split over versions of one template. At most one runs per template."""

    template = models.ForeignKey(PromptTemplate, on_delete=models.CASCADE, related_name="experiments")
    name = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=8, choices=ExperimentStatus.choices, default=ExperimentStatus.DRAFT)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["template"], condition=Q(status="running"), name="one_running_experiment_per_template"
            ),
        ]

    def __str__(self) -> str:
        return self.name or f"experiment {self.pk} on {self.template.name}"


class ExperimentVariant(models.Model):
    """A version with a weight (percent). `buckets` are the slices of the 10,000 assignment buckets
    this variant owns, as [[start, end), ...]; weight changes move only the difference (services.py)."""

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="variants")
    version = models.ForeignKey(PromptVersion, on_delete=models.PROTECT, related_name="+")
    weight = models.PositiveSmallIntegerField()
    buckets = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["experiment", "id"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "version"], name="variant_version_unique"),
            models.CheckConstraint(condition=Q(weight__lte=100), name="variant_weight_at_most_100"),
        ]

    def __str__(self) -> str:
        return f"v{self.version.number} ({self.weight}%)"
