"""Reads of prompts for a tenant, and the hot-path resolve + render with its per-process cache.

Steady state costs no database query: each process keeps immutable snapshots of the templates it
has resolved (tenants.caching.StampedLocalCache), re-validated against Redis at most every
PROMPT_CACHE_CHECK_SECONDS; every write invalidates, so a label move or an experiment change
reaches every worker within that many seconds (at once in the process that made it).
"""

from __future__ import annotations

import bisect
import hashlib
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db.models import Q, QuerySet

from prompts.models import (
    ASSIGNMENT_BUCKETS,
    PRODUCTION_LABEL,
    Experiment,
    ExperimentStatus,
    PromptLabel,
    PromptTemplate,
    PromptVersion,
)
from prompts.rendering import resolve_values, substitute
from tenants.caching import StampedLocalCache
from tenants.errors import ForbiddenError, NotFoundError
from tenants.models import Tenant

if TYPE_CHECKING:
    from monitoring.experiments import VariantResult


class PromptNotFound(NotFoundError):
    code = "prompt_not_found"


def visible_templates(*, tenant: Tenant) -> QuerySet[PromptTemplate]:
    """The tenant's own templates plus global ones it does not override (same name)."""
    own_names = PromptTemplate.objects.filter(tenant=tenant).values("name")
    return PromptTemplate.objects.filter(Q(tenant=tenant) | (Q(tenant__isnull=True) & ~Q(name__in=own_names)))


def template_for_tenant(*, tenant: Tenant, name: str) -> PromptTemplate:
    """The template `name` means for this tenant: its own, else the global one; 404 otherwise."""
    template = (
        PromptTemplate.objects.filter(Q(tenant=tenant) | Q(tenant__isnull=True), name=name)
        .order_by("tenant_id")
        .first()
    )  # NULLs sort last: the tenant's own wins
    if template is None:
        raise PromptNotFound(f"No prompt named '{name}'.", param="prompt")
    return template


def owned_template(*, tenant: Tenant, name: str) -> PromptTemplate:
    """A template the tenant may change: its own. Global ones are managed by operators."""
    template = template_for_tenant(tenant=tenant, name=name)
    if template.tenant_id != tenant.pk:
        raise ForbiddenError(
            f"'{name}' is a global prompt; operators manage it in the admin. "
            "Create your own prompt of that name to override it.",
            param="prompt",
            code="global_prompt_read_only",
        )
    return template


def running_experiment(*, template: PromptTemplate) -> Experiment | None:
    return (
        template.experiments.filter(status=ExperimentStatus.RUNNING)
        .prefetch_related("variants__version")
        .first()
    )


# --- hot path ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionSnapshot:
    id: int
    number: int
    messages: list[dict[str, str]] | None
    text: str | None
    variables: dict[str, str | None]
    model_config: dict[str, Any]

    @classmethod
    def of(cls, version: PromptVersion) -> VersionSnapshot:
        return cls(
            version.pk,
            version.number,
            version.messages,
            version.text,
            dict(version.variables),
            dict(version.model_config),
        )


@dataclass(frozen=True)
class TemplateSnapshot:
    id: int
    name: str
    kind: str
    labels: dict[str, VersionSnapshot]
    experiment_id: int | None = None
    # Sorted bucket range starts, and per range: (end, variant id, version).
    range_starts: list[int] = field(default_factory=list)
    ranges: list[tuple[int, int, VersionSnapshot]] = field(default_factory=list)

    def variant_for_bucket(self, bucket: int) -> tuple[int, VersionSnapshot]:
        index = bisect.bisect_right(self.range_starts, bucket) - 1
        end, variant_id, version = self.ranges[index]
        assert bucket < end, "bucket ranges must cover 0..ASSIGNMENT_BUCKETS"
        return variant_id, version


@dataclass(frozen=True)
class ResolvedPrompt:
    name: str
    kind: str
    version: VersionSnapshot
    experiment_id: int | None
    variant_id: int | None


@dataclass(frozen=True)
class RenderedPrompt:
    resolved: ResolvedPrompt
    messages: list[dict[str, str]] | None
    text: str | None


def _snapshot(template: PromptTemplate) -> TemplateSnapshot:
    labels = {
        label.name: VersionSnapshot.of(label.version)
        for label in PromptLabel.objects.filter(template=template).select_related("version")
    }
    experiment = running_experiment(template=template)
    if experiment is None:
        return TemplateSnapshot(template.pk, template.name, template.kind, labels)
    ranges = sorted(
        (start, end, variant.pk, VersionSnapshot.of(variant.version))
        for variant in experiment.variants.all()
        for start, end in variant.buckets
    )
    return TemplateSnapshot(
        template.pk,
        template.name,
        template.kind,
        labels,
        experiment.pk,
        range_starts=[start for start, *_ in ranges],
        ranges=[(end, pk, version) for _, end, pk, version in ranges],
    )


# Per-process prompt snapshots, grouped by prompt name (a tenant's template can shadow a global one).
prompt_snapshots: StampedLocalCache[TemplateSnapshot] = StampedLocalCache(
    "prompts", lambda: settings.PROMPT_CACHE_CHECK_SECONDS
)
_versions: dict[tuple[int, int], VersionSnapshot] = {}  # versions are immutable: cached for good


def prompt_cache_invalidate(*, name: str) -> None:
    """Called by every prompt write."""
    prompt_snapshots.invalidate(name)


def template_snapshot(*, tenant: Tenant, name: str) -> TemplateSnapshot:
    return prompt_snapshots.get(
        name, tenant.pk, lambda: _snapshot(template_for_tenant(tenant=tenant, name=name))
    )


def _explicit_version(template_id: int, name: str, number: int) -> VersionSnapshot:
    key = (template_id, number)
    if key not in _versions:
        version = PromptVersion.objects.filter(template_id=template_id, number=number).first()
        if version is None:
            raise PromptNotFound(f"Prompt '{name}' has no version {number}.", param="version")
        _versions[key] = VersionSnapshot.of(version)
    return _versions[key]


def assignment_bucket(*, experiment_id: int, tenant: Tenant, user: str | None) -> int:
    """Sticky: the same (experiment, tenant, end user) always lands in the same bucket."""
    if not user:
        return secrets.randbelow(ASSIGNMENT_BUCKETS)
    digest = hashlib.sha256(f"{experiment_id}:{tenant.pk}:{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % ASSIGNMENT_BUCKETS


def prompt_resolve(
    *,
    tenant: Tenant,
    name: str,
    label: str | None = None,
    version: int | None = None,
    user: str | None = None,
) -> ResolvedPrompt:
    """Which version a request gets: an explicit version; else an explicit label other than
    production; else the running experiment's variant for this user; else the production label."""
    snapshot = template_snapshot(tenant=tenant, name=name)
    if version is not None:
        chosen = _explicit_version(snapshot.id, name, version)
        return ResolvedPrompt(snapshot.name, snapshot.kind, chosen, None, None)
    wanted = label or PRODUCTION_LABEL
    if wanted == PRODUCTION_LABEL and snapshot.experiment_id is not None:
        bucket = assignment_bucket(experiment_id=snapshot.experiment_id, tenant=tenant, user=user)
        variant_id, chosen = snapshot.variant_for_bucket(bucket)
        return ResolvedPrompt(snapshot.name, snapshot.kind, chosen, snapshot.experiment_id, variant_id)
    if wanted not in snapshot.labels:
        raise PromptNotFound(f"Prompt '{name}' has no label '{wanted}'.", param="label")
    return ResolvedPrompt(snapshot.name, snapshot.kind, snapshot.labels[wanted], None, None)


def prompt_render(*, resolved: ResolvedPrompt, variables: Any) -> RenderedPrompt:
    version = resolved.version
    values = resolve_values(version.variables, variables)
    if version.messages is not None:
        messages = [
            {"role": m["role"], "content": substitute(m["content"], values)} for m in version.messages
        ]
        return RenderedPrompt(resolved, messages, None)
    return RenderedPrompt(resolved, None, substitute(version.text or "", values))


def experiment_results(*, tenant: Tenant, experiment: Experiment) -> list[VariantResult]:
    """The experiment's statistics over this tenant's traces and feedback. The control is the variant
    created first: the first one listed when the experiment was started."""
    # Imported here: scipy takes a second and tens of MB to load, which no chat request should pay.
    from monitoring.experiments import VariantRef
    from monitoring.experiments import experiment_results as variant_statistics

    variants = list(experiment.variants.select_related("version").order_by("id"))
    if not variants:
        return []
    refs = [VariantRef(variant.pk, f"v{variant.version.number}") for variant in variants]
    return variant_statistics(tenant=tenant, variants=refs, control=variants[0].pk)
