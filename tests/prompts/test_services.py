from __future__ import annotations

import random
from collections import Counter

import pytest
from django.db import IntegrityError, connection, transaction
from django.db.models import ProtectedError

from prompts.models import ImmutableVersionError, PromptLabel, PromptVersion
from prompts.selectors import assignment_bucket, prompt_render, prompt_resolve
from prompts.services import (
    allocate_buckets,
    experiment_set_weights,
    experiment_start,
    experiment_stop,
    label_moves,
    prompt_label_move,
    prompt_label_rollback,
    prompt_template_create,
    prompt_version_create,
)
from tenants.errors import ConflictError, DomainError
from tenants.models import AuditEvent


def new_version(template, content: str, message: str = "edit"):
    return prompt_version_create(
        template=template,
        actor="test",
        message=message,
        messages=[{"role": "system", "content": content}, {"role": "user", "content": "{{ question }}"}],
    )


def test_create_makes_version_1_labelled_production(support_prompt):
    version = support_prompt.versions.get()
    assert version.number == 1
    assert PromptLabel.objects.get(template=support_prompt, name="production").version == version
    assert version.variables == {"company": None, "tone": "friendly", "question": None}


def test_versions_refuse_update_and_delete_through_the_orm(support_prompt):
    version = support_prompt.versions.get()
    version.message = "sneaky edit"
    with pytest.raises(ImmutableVersionError):
        version.save()
    with pytest.raises(ImmutableVersionError):
        version.delete()
    with pytest.raises(ImmutableVersionError):
        PromptVersion.objects.filter(pk=version.pk).update(message="bulk edit")
    with pytest.raises(ImmutableVersionError):
        PromptVersion.objects.filter(pk=version.pk).delete()
    assert PromptVersion.objects.get(pk=version.pk).message == "Initial version"


def test_versions_refuse_update_and_delete_in_the_database(support_prompt):
    version = support_prompt.versions.get()
    for statement in (
        "UPDATE prompts_promptversion SET message = 'raw' WHERE id = %s",
        "DELETE FROM prompts_promptversion WHERE id = %s",
    ):
        with (
            pytest.raises(IntegrityError, match="immutable"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(statement, [version.pk])
    assert PromptVersion.objects.get(pk=version.pk).message == "Initial version"


def test_a_template_with_versions_cannot_be_deleted(support_prompt):
    with pytest.raises(ProtectedError):
        support_prompt.delete()


def test_new_versions_number_up_and_do_not_move_labels(support_prompt):
    v2 = new_version(support_prompt, "v2 {{ question }}")
    assert v2.number == 2
    assert PromptLabel.objects.get(template=support_prompt, name="production").version.number == 1


def test_label_moves_are_audited_and_rollback_moves_back(support_prompt):
    v2 = new_version(support_prompt, "second")
    v3 = new_version(support_prompt, "third")
    prompt_label_move(template=support_prompt, label="production", version=v2, actor="user:alice")
    prompt_label_move(template=support_prompt, label="production", version=v3, actor="user:bob")
    prompt_label_move(template=support_prompt, label="staging", version=v3, actor="user:bob")
    history = label_moves(template=support_prompt, label="production")
    assert [(e.actor, e.changes["version"]) for e in history] == [
        ("user:bob", [2, 3]),
        ("user:alice", [1, 2]),
        ("test", [None, 1]),
    ]

    prompt_label_rollback(template=support_prompt, actor="user:carol")
    assert PromptLabel.objects.get(template=support_prompt, name="production").version == v2
    latest = label_moves(template=support_prompt, label="production")[0]
    assert (latest.actor, latest.changes["version"]) == ("user:carol", [3, 2])
    assert PromptLabel.objects.get(template=support_prompt, name="staging").version == v3


def test_rollback_without_history_is_a_conflict(support_prompt):
    with pytest.raises(ConflictError):
        prompt_label_rollback(template=support_prompt, actor="test")


def test_label_cannot_point_at_another_templates_version(support_prompt, tenant):
    other = prompt_template_create(tenant=tenant, name="other", kind="text", text="hi", actor="test")
    with pytest.raises(DomainError):
        prompt_label_move(
            template=support_prompt, label="production", version=other.versions.get(), actor="t"
        )


def test_duplicate_name_is_a_conflict(support_prompt, tenant):
    with pytest.raises(ConflictError):
        prompt_template_create(tenant=tenant, name="support", kind="text", text="x", actor="test")


def test_tenant_template_overrides_global_of_the_same_name(tenant, other_tenant):
    prompt_template_create(
        tenant=None, name="greeting", kind="text", text="Global hello {{ name }}", actor="ops"
    )
    prompt_template_create(
        tenant=tenant, name="greeting", kind="text", text="Acme hello {{ name }}", actor="t"
    )
    mine = prompt_render(resolved=prompt_resolve(tenant=tenant, name="greeting"), variables={"name": "Ann"})
    theirs = prompt_render(
        resolved=prompt_resolve(tenant=other_tenant, name="greeting"), variables={"name": "Bo"}
    )
    assert mine.text == "Acme hello Ann"
    assert theirs.text == "Global hello Bo"


def test_weights_must_sum_to_100(support_prompt):
    new_version(support_prompt, "b")
    with pytest.raises(DomainError, match="sum to 100"):
        experiment_start(template=support_prompt, variants=[(1, 50), (2, 40)], actor="t")
    with pytest.raises(DomainError, match="no version 9"):
        experiment_start(template=support_prompt, variants=[(1, 50), (9, 50)], actor="t")
    assert not support_prompt.experiments.exists()


def test_starting_an_experiment_stops_the_running_one(support_prompt):
    new_version(support_prompt, "b")
    first = experiment_start(template=support_prompt, variants=[(1, 50), (2, 50)], actor="t")
    second = experiment_start(template=support_prompt, variants=[(1, 10), (2, 90)], actor="t")
    first.refresh_from_db()
    assert (first.status, second.status) == ("stopped", "running")
    experiment_stop(experiment=second, actor="t")
    with pytest.raises(ConflictError):
        experiment_stop(experiment=second, actor="t")
    assert AuditEvent.objects.filter(action="experiment.stop").count() == 2


def test_assignment_is_sticky_per_user(support_prompt, tenant):
    new_version(support_prompt, "b {{ question }}")
    experiment_start(template=support_prompt, variants=[(1, 50), (2, 50)], actor="t")
    for user in ("alice", "bob", "user-42"):
        seen = {prompt_resolve(tenant=tenant, name="support", user=user).variant_id for _ in range(1000)}
        assert len(seen) == 1


def test_split_accuracy_over_10000_users(support_prompt, tenant):
    new_version(support_prompt, "b")
    new_version(support_prompt, "c")
    experiment_start(template=support_prompt, variants=[(1, 20), (2, 30), (3, 50)], actor="t")
    counts = Counter(
        prompt_resolve(tenant=tenant, name="support", user=f"user-{i}").version.number for i in range(10_000)
    )
    for number, weight in {1: 20, 2: 30, 3: 50}.items():
        assert abs(counts[number] / 100 - weight) <= 2, counts


def test_no_user_means_random_assignment_per_request(support_prompt, tenant):
    new_version(support_prompt, "b")
    experiment_start(template=support_prompt, variants=[(1, 50), (2, 50)], actor="t")
    counts = Counter(prompt_resolve(tenant=tenant, name="support").version.number for _ in range(2000))
    assert set(counts) == {1, 2}
    assert 800 < counts[1] < 1200


def test_explicit_label_or_version_bypasses_the_experiment(support_prompt, tenant):
    v2 = new_version(support_prompt, "b")
    prompt_label_move(template=support_prompt, label="staging", version=v2, actor="t")
    experiment_start(template=support_prompt, variants=[(1, 0), (2, 100)], actor="t")
    assert prompt_resolve(tenant=tenant, name="support", user="u").version.number == 2
    assert prompt_resolve(tenant=tenant, name="support", version=1).variant_id is None
    assert prompt_resolve(tenant=tenant, name="support", version=1).version.number == 1
    assert prompt_resolve(tenant=tenant, name="support", label="staging").version.number == 2


def test_weight_change_moves_only_the_difference(support_prompt, tenant):
    new_version(support_prompt, "b")
    new_version(support_prompt, "c")
    experiment = experiment_start(template=support_prompt, variants=[(1, 33), (2, 33), (3, 34)], actor="t")
    users = [f"user-{i}" for i in range(5000)]
    before = {u: prompt_resolve(tenant=tenant, name="support", user=u).version.number for u in users}
    experiment_set_weights(experiment=experiment, weights=[(1, 20), (2, 33), (3, 47)], actor="t")
    after = {u: prompt_resolve(tenant=tenant, name="support", user=u).version.number for u in users}
    moved = [u for u in users if before[u] != after[u]]
    assert all(before[u] == 1 and after[u] == 3 for u in moved)  # only from the shrunk to the grown variant
    assert abs(len(moved) / len(users) - 0.13) <= 0.02


def test_allocation_moves_exactly_the_sum_of_decreases():
    rng = random.Random(7)
    current = allocate_buckets({}, {1: 25, 2: 25, 3: 50})
    for _ in range(200):
        keys = rng.sample([1, 2, 3, 4, 5], rng.randint(1, 5))
        cuts = sorted(rng.randint(0, 100) for _ in range(len(keys) - 1))
        weights = {k: b - a for k, a, b in zip(keys, [0, *cuts], [*cuts, 100], strict=True)}
        new = allocate_buckets(current, weights)
        owner_before = {b: k for k, ranges in current.items() for s, e in ranges for b in range(s, e)}
        owner_after = {b: k for k, ranges in new.items() for s, e in ranges for b in range(s, e)}
        assert sorted(owner_after) == list(range(10_000))  # every bucket owned exactly once
        moved = sum(1 for b in range(10_000) if owner_before.get(b) != owner_after[b])
        old_sizes = {k: sum(e - s for s, e in r) for k, r in current.items()}
        decreases = sum(
            max(0, old_sizes.get(k, 0) - weights.get(k, 0) * 100) for k in set(old_sizes) | set(weights)
        )
        assert moved == decreases
        current = new


def test_bucket_is_deterministic_and_spread(tenant):
    assert assignment_bucket(experiment_id=1, tenant=tenant, user="a") == assignment_bucket(
        experiment_id=1, tenant=tenant, user="a"
    )
    buckets = {assignment_bucket(experiment_id=1, tenant=tenant, user=f"u{i}") for i in range(1000)}
    assert len(buckets) > 900
