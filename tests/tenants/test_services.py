from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from tenants.errors import ConflictError, DomainError
from tenants.models import ApiKey, AuditEvent, Scope
from tenants.services import (
    api_key_authenticate,
    api_key_create,
    api_key_revoke,
    api_key_rotate,
    tenant_create,
)
from tests.conftest import expire_now


def test_key_has_prefix_public_id_and_only_its_hash_is_stored(tenant):
    api_key, raw_key = api_key_create(tenant=tenant, name="ci", scopes=[Scope.CHAT], actor="test")
    prefix, public_id, secret = raw_key.split("_", 2)
    assert prefix == "tk"
    assert public_id == api_key.public_id
    assert len(secret) >= 40
    stored = ApiKey.objects.get(pk=api_key.pk)
    assert stored.secret_hash == hashlib.sha256(raw_key.encode()).hexdigest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM tenants_apikey WHERE id = %s", [api_key.pk])
        row = cursor.fetchone()
    assert not any(secret in str(column) for column in row)


def test_keys_are_unique_and_high_entropy(tenant):
    raw_keys = {
        api_key_create(tenant=tenant, name=f"k{i}", scopes=["chat"], actor="test")[1] for i in range(20)
    }
    assert len(raw_keys) == 20


def test_authenticate_returns_key_with_tenant(tenant):
    api_key, raw_key = api_key_create(tenant=tenant, name="ci", scopes=[Scope.CHAT], actor="test")
    found = api_key_authenticate(raw_key=raw_key)
    assert found is not None
    assert found.pk == api_key.pk
    assert found.tenant == tenant


@pytest.mark.parametrize(
    "mangle",
    [
        lambda raw: raw[:-1] + ("A" if raw[-1] != "A" else "B"),  # wrong secret, right public id
        lambda raw: "tk_zzzzzzzzzzzz_" + raw.split("_", 2)[2],  # unknown public id
        lambda raw: raw.replace("tk_", "xx_", 1),  # wrong prefix
        lambda raw: raw.rsplit("_", 1)[0],  # truncated
        lambda raw: "",
    ],
)
def test_authenticate_rejects_wrong_keys(tenant, mangle):
    _, raw_key = api_key_create(tenant=tenant, name="ci", scopes=[Scope.CHAT], actor="test")
    assert api_key_authenticate(raw_key=mangle(raw_key)) is None


def test_expired_key_is_rejected(tenant):
    api_key, raw_key = api_key_create(
        tenant=tenant,
        name="ci",
        scopes=[Scope.CHAT],
        actor="test",
        expires_at=timezone.now() + timedelta(hours=1),
    )
    assert api_key_authenticate(raw_key=raw_key) is not None
    expire_now(api_key)
    assert api_key_authenticate(raw_key=raw_key) is None


def test_expiry_in_the_past_is_refused(tenant):
    with pytest.raises(DomainError, match="future"):
        api_key_create(
            tenant=tenant,
            name="ci",
            scopes=["chat"],
            actor="test",
            expires_at=timezone.now() - timedelta(minutes=1),
        )
    assert not ApiKey.objects.exists()


def test_unknown_scope_is_refused(tenant):
    with pytest.raises(DomainError, match="Unknown scope"):
        api_key_create(tenant=tenant, name="ci", scopes=["chat", "root"], actor="test")


def test_revoke_is_immediate_and_audited(tenant):
    api_key, raw_key = api_key_create(tenant=tenant, name="ci", scopes=[Scope.CHAT], actor="test")
    api_key_revoke(tenant=tenant, api_key=api_key, actor="user:ops")
    assert api_key_authenticate(raw_key=raw_key) is None
    event = AuditEvent.objects.get(action="api_key.revoke")
    assert event.actor == "user:ops"
    assert event.target_id == api_key.public_id
    assert event.tenant == tenant
    with pytest.raises(ConflictError, match="already revoked"):
        api_key_revoke(tenant=tenant, api_key=api_key, actor="user:ops")


def test_rotate_keeps_old_key_valid_for_the_grace_period(tenant):
    old, old_raw = api_key_create(
        tenant=tenant, name="ci", scopes=[Scope.CHAT, Scope.DOCUMENTS], actor="test"
    )
    new, new_raw = api_key_rotate(tenant=tenant, api_key=old, actor="test", grace=timedelta(minutes=10))
    assert new.scopes == old.scopes
    assert new.name == old.name
    assert new.rotated_from == old
    assert api_key_authenticate(raw_key=new_raw) is not None
    assert api_key_authenticate(raw_key=old_raw) is not None  # still inside the grace period
    old.refresh_from_db()
    assert timedelta(minutes=9) < old.expires_at - timezone.now() <= timedelta(minutes=10)
    expire_now(old)
    assert api_key_authenticate(raw_key=old_raw) is None
    assert api_key_authenticate(raw_key=new_raw) is not None
    assert AuditEvent.objects.filter(action="api_key.rotate", target_id=old.public_id).exists()


def test_rotate_with_zero_grace_ends_old_key_now(tenant):
    old, old_raw = api_key_create(tenant=tenant, name="ci", scopes=[Scope.CHAT], actor="test")
    api_key_rotate(tenant=tenant, api_key=old, actor="test", grace=timedelta(0))
    assert api_key_authenticate(raw_key=old_raw) is None


def test_rotate_never_extends_an_earlier_expiry(tenant):
    soon = timezone.now() + timedelta(minutes=5)
    old, _ = api_key_create(tenant=tenant, name="ci", scopes=[Scope.CHAT], actor="test", expires_at=soon)
    api_key_rotate(tenant=tenant, api_key=old, actor="test", grace=timedelta(days=1))
    old.refresh_from_db()
    assert old.expires_at == soon


def test_a_key_is_rotated_once_and_grace_is_bounded(tenant):
    old, _ = api_key_create(tenant=tenant, name="ci", scopes=[Scope.CHAT], actor="test")
    with pytest.raises(DomainError, match="grace_seconds"):
        api_key_rotate(tenant=tenant, api_key=old, actor="test", grace=timedelta(days=365))
    api_key_rotate(tenant=tenant, api_key=old, actor="test")
    with pytest.raises(ConflictError, match="already rotated"):
        api_key_rotate(tenant=tenant, api_key=old, actor="test")
    assert ApiKey.objects.filter(tenant=tenant).count() == 2


def test_last_used_is_written_at_most_once_per_resolution(tenant):
    api_key, raw_key = api_key_create(tenant=tenant, name="ci", scopes=[Scope.CHAT], actor="test")
    with CaptureQueriesContext(connection) as first:
        api_key_authenticate(raw_key=raw_key)
    assert [q["sql"] for q in first.captured_queries if q["sql"].startswith("UPDATE")]
    api_key.refresh_from_db()
    assert api_key.last_used_at is not None
    with CaptureQueriesContext(connection) as later:
        for _ in range(5):
            api_key_authenticate(raw_key=raw_key)
    assert not [q["sql"] for q in later.captured_queries if q["sql"].startswith("UPDATE")]
    assert later.captured_queries == []  # key and tenant come from the cache in the steady state


def test_revoking_drops_the_cached_key(tenant):
    api_key, raw_key = api_key_create(tenant=tenant, name="ci", scopes=[Scope.CHAT], actor="test")
    assert api_key_authenticate(raw_key=raw_key) is not None
    assert cache.get(f"apikey:{api_key.public_id}") is not None
    api_key_revoke(tenant=tenant, api_key=api_key, actor="test")
    assert api_key_authenticate(raw_key=raw_key) is None


def test_tenant_edits_drop_its_cached_keys(tenant):
    _, raw_key = api_key_create(tenant=tenant, name="ci", scopes=[Scope.CHAT], actor="test")
    assert api_key_authenticate(raw_key=raw_key).tenant.requests_per_minute == tenant.requests_per_minute
    tenant.requests_per_minute = 7
    tenant.is_active = False
    tenant.save()
    cached = api_key_authenticate(raw_key=raw_key)
    assert cached.tenant.requests_per_minute == 7
    assert cached.tenant.is_active is False


def test_authentication_works_without_redis(tenant, settings):
    _, raw_key = api_key_create(tenant=tenant, name="ci", scopes=[Scope.CHAT], actor="test")
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}}
    assert api_key_authenticate(raw_key=raw_key) is not None


def test_tenant_create_defaults_from_settings_and_refuses_duplicate_slug(db, settings):
    settings.TENANT_DEFAULT_REQUESTS_PER_MINUTE = 42
    tenant = tenant_create(name="Initech Ltd", actor="test")
    assert tenant.slug == "initech-ltd"
    assert tenant.requests_per_minute == 42
    assert tenant.allows_model("gpt-4o-mini")
    with pytest.raises(ConflictError):
        tenant_create(name="Initech Ltd", actor="test")


def test_allowed_models_patterns(tenant):
    tenant.allowed_models = ["gpt-4o*", "local"]
    assert tenant.allows_model("gpt-4o-mini")
    assert tenant.allows_model("local")
    assert not tenant.allows_model("claude-3-5-haiku-latest")
