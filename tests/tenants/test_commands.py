from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from tenants.models import ApiKey, Tenant
from tenants.services import api_key_authenticate


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_create_tenant_prints_id_and_a_working_key(db):
    output = run(
        "create_tenant", "Initech", "--rpm", "120", "--monthly-tokens", "5000", "--models", "gpt-4o*,local"
    )
    tenant = Tenant.objects.get(slug="initech")
    assert f"id={tenant.pk}" in output
    raw_key = output.strip().splitlines()[-1]
    api_key = api_key_authenticate(raw_key=raw_key)
    assert api_key is not None
    assert api_key.tenant == tenant
    assert tenant.requests_per_minute == 120
    assert tenant.monthly_token_quota == 5000
    assert tenant.allowed_models == ["gpt-4o*", "local"]


def test_create_tenant_json_output_and_duplicate(db):
    data = json.loads(run("create_tenant", "Umbrella", "--json"))
    assert api_key_authenticate(raw_key=data["key"]).tenant.pk == data["tenant_id"]
    with pytest.raises(CommandError, match="already exists"):
        run("create_tenant", "Umbrella")
    assert Tenant.objects.filter(slug="umbrella").count() == 1


def test_create_tenant_rejects_negative_quota(db):
    with pytest.raises(CommandError):
        run("create_tenant", "Bad", "--rpm", "-5")
    assert not Tenant.objects.filter(slug="bad").exists()


def test_create_api_key_with_scopes(tenant):
    raw_key = run("create_api_key", "acme", "--scopes", "chat", "documents", "--expires-in-days", "7").strip()
    api_key = api_key_authenticate(raw_key=raw_key)
    assert sorted(api_key.scopes) == ["chat", "documents"]
    assert api_key.expires_at is not None


def test_create_api_key_unknown_tenant(db):
    with pytest.raises(CommandError, match="No tenant"):
        run("create_api_key", "nope")


def test_bootstrap_demo_is_idempotent_and_prints_a_working_curl_line(db, settings, tmp_path):
    settings.DATA_DIR = tmp_path
    first = run("bootstrap_demo")
    second = run("bootstrap_demo")
    assert Tenant.objects.filter(slug="demo").count() == 1
    assert get_user_model().objects.filter(username="admin", is_superuser=True).count() == 1
    password = (tmp_path / "admin_password").read_text().strip()
    assert password in first
    assert password in second
    assert get_user_model().objects.get(username="admin").check_password(password)
    first_key = next(line for line in first.splitlines() if "curl" in line).split("Bearer ")[1].split("'")[0]
    second_key = (
        next(line for line in second.splitlines() if "curl" in line).split("Bearer ")[1].split("'")[0]
    )
    assert first_key != second_key
    assert api_key_authenticate(raw_key=second_key) is not None
    assert api_key_authenticate(raw_key=first_key) is not None  # rotated with a one-hour grace
    assert ApiKey.objects.filter(tenant__slug="demo").count() == 2
