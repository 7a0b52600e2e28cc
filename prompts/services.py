"""Every write about prompts: templates, immutable versions, audited label moves, experiments."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from prompts.models import (
    ASSIGNMENT_BUCKETS,
    PRODUCTION_LABEL,
    Experiment,
    ExperimentStatus,
    ExperimentVariant,
    PromptLabel,
    PromptTemplate,
    PromptVersion,
)
from prompts.rendering import declared_variables, validate_content, validate_model_config
from prompts.selectors import prompt_cache_invalidate
from tenants.errors import ConflictError, DomainError
from tenants.models import AuditEvent, Tenant
from tenants.services import audit_event_record

Ranges = list[list[int]]


@dataclass(frozen=True)
class Promotion:
    experiment: Experiment
    label: PromptLabel
    previous_version: int | None


@transaction.atomic
def prompt_template_create(
    *,
    tenant: Tenant | None,
    name: str,
    kind: str,
    actor: str,
    description: str = "",
    messages: list[dict[str, str]] | None = None,
    text: str | None = None,
    variables: dict[str, str | None] | None = None,
    model_config: dict | None = None,
) -> PromptTemplate:
    """Creates the template, its version 1 and the `production` label pointing at it."""
    if PromptTemplate.objects.filter(tenant=tenant, name=name).exists():
        raise ConflictError(f"A prompt named '{name}' already exists.", param="name")
    template = PromptTemplate(tenant=tenant, name=name, kind=kind, description=description)
    template.full_clean(validate_unique=False, validate_constraints=False)
    try:
        with transaction.atomic():
            template.save()
    except IntegrityError as exc:
        raise ConflictError(f"A prompt named '{name}' already exists.", param="name") from exc
    version = prompt_version_create(
        template=template,
        messages=messages,
        text=text,
        variables=variables,
        model_config=model_config,
        message="Initial version",
        actor=actor,
    )
    prompt_label_move(template=template, label=PRODUCTION_LABEL, version=version, actor=actor)
    audit_event_record(tenant=tenant, actor=actor, action="prompt.create", target=template)
    return template


@transaction.atomic
def prompt_version_create(
    *,
    template: PromptTemplate,
    actor: str,
    messages: list[dict[str, str]] | None = None,
    text: str | None = None,
    variables: dict[str, str | None] | None = None,
    model_config: dict | None = None,
    message: str = "",
) -> PromptVersion:
    validate_content(template.kind, messages, text)
    declared = declared_variables(template.kind, messages, text, variables)
    config = validate_model_config(model_config)
    # Lock the template row so concurrent edits get consecutive numbers, not a unique violation.
    PromptTemplate.objects.select_for_update().filter(pk=template.pk).first()
    latest = template.versions.aggregate(latest=Max("number"))["latest"] or 0
    version = PromptVersion.objects.create(
        template=template,
        number=latest + 1,
        messages=messages,
        text=text,
        variables=declared,
        model_config=config,
        message=message[:500],
        author=actor,
    )
    prompt_cache_invalidate(name=template.name)
    return version


def _version_of(template: PromptTemplate, number: int) -> PromptVersion:
    version = template.versions.filter(number=number).first()
    if version is None:
        raise DomainError(f"Prompt '{template.name}' has no version {number}.", param="version")
    return version


@transaction.atomic
def prompt_label_move(
    *, template: PromptTemplate, label: str, version: PromptVersion, actor: str
) -> PromptLabel:
    """Points `label` at `version` (creating the label if new) and records who moved it from where."""
    if version.template_id != template.pk:
        raise DomainError("The version belongs to another prompt.", param="version")
    current = PromptLabel.objects.select_for_update().filter(template=template, name=label).first()
    previous_number = current.version.number if current else None
    if current is None:
        current = PromptLabel(template=template, name=label)
        current.full_clean(exclude=["version"], validate_unique=False, validate_constraints=False)
    elif current.version_id == version.pk:
        return current
    current.version = version
    current.updated_by = actor
    current.save()
    audit_event_record(
        tenant=template.tenant,
        actor=actor,
        action="prompt_label.move",
        target=template,
        changes={"label": [label, label], "version": [previous_number, version.number]},
    )
    prompt_cache_invalidate(name=template.name)
    return current


def label_moves(*, template: PromptTemplate, label: str | None = None) -> list[AuditEvent]:
    """The audit history of the template's label moves, newest first."""
    events = AuditEvent.objects.filter(
        action="prompt_label.move", target_type="PromptTemplate", target_id=str(template.pk)
    ).order_by("-created_at", "-pk")
    return [event for event in events if label is None or event.changes.get("label", [None])[0] == label]


@transaction.atomic
def prompt_label_rollback(
    *, template: PromptTemplate, actor: str, label: str = PRODUCTION_LABEL
) -> PromptLabel:
    """Moves `label` back to the version it pointed at before its last move."""
    moves = label_moves(template=template, label=label)
    previous = moves[0].changes["version"][0] if moves else None
    if previous is None:
        raise ConflictError(f"Label '{label}' has no earlier version to roll back to.", param="label")
    return prompt_label_move(
        template=template, label=label, version=_version_of(template, previous), actor=actor
    )


def allocate_buckets(current: dict[int, Ranges], weights: dict[int, int]) -> dict[int, Ranges]:
    """New bucket ranges for `weights` (percent per key) that move as few buckets as possible.

    Each variant keeps up to its new share of the buckets it holds (from the start of its ranges);
    variants still short take only from the buckets nobody kept. Nobody else moves, so a change
    of weights reassigns exactly the sum of the decreases.
    """
    targets = {key: weight * ASSIGNMENT_BUCKETS // 100 for key, weight in weights.items()}
    kept: dict[int, Ranges] = {}
    for key, target in targets.items():
        ranges: Ranges = []
        for start, end in sorted(current.get(key, [])):
            take = min(end - start, target)
            if take <= 0:
                break
            ranges.append([start, start + take])
            target -= take
        kept[key] = ranges
    pool = _complement([bucket_range for ranges in kept.values() for bucket_range in ranges])
    result: dict[int, Ranges] = {}
    for key in sorted(targets):
        ranges = kept[key]
        missing = targets[key] - sum(end - start for start, end in ranges)
        while missing > 0:
            start, end = pool[0]
            take = min(end - start, missing)
            ranges.append([start, start + take])
            missing -= take
            if start + take == end:
                pool.pop(0)
            else:
                pool[0] = [start + take, end]
        result[key] = _merged(ranges)
    return result


def _complement(ranges: Ranges) -> Ranges:
    free: Ranges = []
    position = 0
    for start, end in sorted(ranges):
        if start > position:
            free.append([position, start])
        position = max(position, end)
    if position < ASSIGNMENT_BUCKETS:
        free.append([position, ASSIGNMENT_BUCKETS])
    return free


def _merged(ranges: Ranges) -> Ranges:
    merged: Ranges = []
    for start, end in sorted(ranges):
        if merged and merged[-1][1] == start:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return merged


def _validated_weights(template: PromptTemplate, variants: Sequence[tuple[int, int]]) -> dict[int, int]:
    """{version number: weight} after checking numbers exist, are distinct and weights sum to 100."""
    if not variants:
        raise DomainError("An experiment needs at least one variant.", param="variants")
    numbers = [number for number, _ in variants]
    if len(set(numbers)) != len(numbers):
        raise DomainError("Each version may appear once in an experiment.", param="variants")
    for index, (_, weight) in enumerate(variants):
        if not 0 <= weight <= 100:
            raise DomainError("Weights are percentages between 0 and 100.", param=f"variants.{index}.weight")
    total = sum(weight for _, weight in variants)
    if total != 100:
        raise DomainError(f"Variant weights must sum to 100, not {total}.", param="variants")
    for number in numbers:
        _version_of(template, number)
    return dict(variants)


@transaction.atomic
def experiment_start(
    *, template: PromptTemplate, variants: Sequence[tuple[int, int]], actor: str, name: str = ""
) -> Experiment:
    """Creates an experiment over (version number, weight) pairs and runs it at once."""
    _validated_weights(template, variants)
    experiment = Experiment.objects.create(template=template, name=name, created_by=actor)
    experiment_set_weights(experiment=experiment, weights=variants, actor=actor)
    return experiment_run(experiment=experiment, actor=actor)


@transaction.atomic
def experiment_run(*, experiment: Experiment, actor: str) -> Experiment:
    """Draft -> running; the template's running experiment, if any, is stopped first."""
    locked = Experiment.objects.select_for_update().select_related("template").get(pk=experiment.pk)
    if locked.status != ExperimentStatus.DRAFT:
        raise ConflictError(f"Experiment {locked.pk} is {locked.status}; only a draft can start.")
    if sum(locked.variants.values_list("weight", flat=True)) != 100:
        raise DomainError("Variant weights must sum to 100 before the experiment starts.", param="variants")
    PromptTemplate.objects.select_for_update().filter(pk=locked.template_id).first()
    for running in locked.template.experiments.filter(status=ExperimentStatus.RUNNING):
        experiment_stop(experiment=running, actor=actor)
    locked.status = ExperimentStatus.RUNNING
    locked.started_at = timezone.now()
    locked.save(update_fields=["status", "started_at"])
    audit_event_record(
        tenant=locked.template.tenant,
        actor=actor,
        action="experiment.start",
        target=locked,
        changes={"status": [ExperimentStatus.DRAFT, ExperimentStatus.RUNNING]},
    )
    prompt_cache_invalidate(name=locked.template.name)
    return locked


@transaction.atomic
def experiment_stop(*, experiment: Experiment, actor: str) -> Experiment:
    locked = Experiment.objects.select_for_update().select_related("template").get(pk=experiment.pk)
    if locked.status == ExperimentStatus.STOPPED:
        raise ConflictError(f"Experiment {locked.pk} is already stopped.")
    previous = locked.status
    locked.status = ExperimentStatus.STOPPED
    locked.stopped_at = timezone.now()
    locked.save(update_fields=["status", "stopped_at"])
    audit_event_record(
        tenant=locked.template.tenant,
        actor=actor,
        action="experiment.stop",
        target=locked,
        changes={"status": [previous, locked.status]},
    )
    prompt_cache_invalidate(name=locked.template.name)
    return locked


@transaction.atomic
def experiment_set_weights(
    *, experiment: Experiment, weights: Sequence[tuple[int, int]], actor: str
) -> Experiment:
    """Changes variant weights (and adds or drops variants), reassigning as few users as possible."""
    locked = Experiment.objects.select_for_update().select_related("template").get(pk=experiment.pk)
    if locked.status == ExperimentStatus.STOPPED:
        raise ConflictError(f"Experiment {locked.pk} is stopped; start a new one instead.")
    template = locked.template
    new_weights = _validated_weights(template, weights)
    existing = {variant.version.number: variant for variant in locked.variants.select_related("version")}
    current = {number: variant.buckets for number, variant in existing.items()}
    buckets = allocate_buckets(current, new_weights)
    before = {number: variant.weight for number, variant in existing.items()}
    for number, variant in existing.items():
        if number not in new_weights:
            variant.delete()
    versions = {version.number: version for version in template.versions.filter(number__in=new_weights)}
    for number, weight in new_weights.items():
        variant = existing.get(number) or ExperimentVariant(experiment=locked, version=versions[number])
        variant.weight = weight
        variant.buckets = buckets[number]
        variant.save()
    audit_event_record(
        tenant=template.tenant,
        actor=actor,
        action="experiment.weights",
        target=locked,
        changes={"weights": [before, new_weights]},
    )
    prompt_cache_invalidate(name=template.name)
    return locked


@transaction.atomic
def experiment_promote(*, experiment: Experiment, variant_id: int, actor: str) -> Promotion:
    """Ends an experiment by adopting one variant: stops it and points `production` at the variant's
    version, audited, in one transaction (the label move and the stop invalidate the prompt caches)."""
    locked = Experiment.objects.select_for_update().select_related("template").get(pk=experiment.pk)
    if locked.status == ExperimentStatus.STOPPED:
        raise ConflictError(f"Experiment {locked.pk} is already stopped; move the label instead.")
    variant = locked.variants.select_related("version").filter(pk=variant_id).first()
    if variant is None:
        raise DomainError(f"Experiment {locked.pk} has no variant {variant_id}.", param="variant")
    template = locked.template
    previous = PromptLabel.objects.filter(template=template, name=PRODUCTION_LABEL).select_related("version")
    previous_number = next((label.version.number for label in previous), None)
    stopped = experiment_stop(experiment=locked, actor=actor)
    label = prompt_label_move(template=template, label=PRODUCTION_LABEL, version=variant.version, actor=actor)
    audit_event_record(
        tenant=template.tenant,
        actor=actor,
        action="experiment.promote",
        target=locked,
        changes={
            "variant": [None, variant.pk],
            PRODUCTION_LABEL: [previous_number, variant.version.number],
        },
    )
    return Promotion(stopped, label, previous_number)
