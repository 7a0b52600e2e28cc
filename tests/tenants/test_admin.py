from __future__ import annotations

import re

import pytest

from tenants.models import ApiKey, AuditEvent
from tenants.services import api_key_authenticate

RAW_KEY = re.compile(r"tk_[a-z0-9]{12}_[A-Za-z0-9_-]{40,}")


@pytest.mark.parametrize(
    "url",
    [
        "/admin/tenants/tenant/",
        "/admin/tenants/apikey/",
        "/admin/tenants/apikey/add/",
        "/admin/tenants/auditevent/",
    ],
)
def test_admin_pages_need_login(client, db, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_tenant_pages_render_for_staff(admin_client, tenant, make_key):
    make_key(tenant)
    assert admin_client.get("/admin/tenants/tenant/").status_code == 200
    page = admin_client.get(f"/admin/tenants/tenant/{tenant.pk}/change/")
    assert page.status_code == 200
    assert b"Create API key" in page.content
    assert admin_client.get("/admin/tenants/apikey/?status=active").status_code == 200
    assert admin_client.get("/admin/tenants/tenant/?q=acme").status_code == 200


def test_admin_creates_a_key_and_shows_it_once(admin_client, tenant):
    form = admin_client.get(f"/admin/tenants/apikey/add/?tenant={tenant.pk}")
    assert form.status_code == 200
    response = admin_client.post(
        "/admin/tenants/apikey/add/",
        {
            "tenant": tenant.pk,
            "name": "from admin",
            "scopes": ["chat", "documents"],
        },
    )
    assert response.status_code == 302  # post/redirect/get: the key is on the next page
    assert not RAW_KEY.search(response.content.decode())
    shown = admin_client.get(response["Location"])
    assert "no-store" in shown["Cache-Control"]
    page = shown.content.decode()
    raw_key = RAW_KEY.search(page).group(0)
    api_key = api_key_authenticate(raw_key=raw_key)
    assert api_key.name == "from admin"
    assert api_key.created_by == "user:admin"
    assert "chat, documents" in page
    assert "never" in page
    assert 'class="button copy-key"' in page

    reload = admin_client.get(response["Location"]).content.decode()
    assert not RAW_KEY.search(reload)
    assert "already shown" in reload
    assert ApiKey.objects.count() == 1  # a reload mints no second key
    change_page = admin_client.get(f"/admin/tenants/apikey/{api_key.pk}/change/").content.decode()
    assert raw_key not in change_page
    assert raw_key not in admin_client.get("/admin/tenants/apikey/").content.decode()


def test_admin_create_key_form_errors_create_nothing(admin_client, tenant):
    response = admin_client.post(
        "/admin/tenants/apikey/add/", {"tenant": tenant.pk, "name": "", "scopes": []}
    )
    assert response.status_code == 200
    assert not RAW_KEY.search(response.content.decode())
    assert not ApiKey.objects.exists()


def test_admin_revoke_and_rotate_actions(admin_client, tenant, make_key):
    to_revoke, revoked_raw = make_key(tenant)
    to_rotate, _ = make_key(tenant)
    asked = admin_client.post(
        "/admin/tenants/apikey/", {"action": "revoke_keys", "_selected_action": [to_revoke.pk]}
    )
    assert "Yes, revoke now" in asked.content.decode()
    assert api_key_authenticate(raw_key=revoked_raw) is not None  # not before the confirmation
    admin_client.post(
        "/admin/tenants/apikey/",
        {"action": "revoke_keys", "_selected_action": [to_revoke.pk], "confirm": "yes"},
    )
    assert api_key_authenticate(raw_key=revoked_raw) is None
    assert AuditEvent.objects.filter(action="api_key.revoke", actor="user:admin").exists()
    response = admin_client.post(
        "/admin/tenants/apikey/", {"action": "rotate_keys", "_selected_action": [to_rotate.pk]}
    )
    assert response.status_code == 302
    new_raw = RAW_KEY.search(admin_client.get(response["Location"]).content.decode()).group(0)
    assert api_key_authenticate(raw_key=new_raw).rotated_from == to_rotate


def test_revoke_now_asks_then_revokes(admin_client, tenant, make_key):
    api_key, raw_key = make_key(tenant)
    change = admin_client.get(f"/admin/tenants/apikey/{api_key.pk}/change/").content.decode()
    revoke_url = f"/admin/tenants/apikey/{api_key.pk}/revoke/"
    assert revoke_url in change
    asked = admin_client.get(revoke_url)
    assert asked.status_code == 200
    assert "Yes, revoke now" in asked.content.decode()
    assert api_key_authenticate(raw_key=raw_key) is not None
    response = admin_client.post(revoke_url)
    assert response.status_code == 302
    assert api_key_authenticate(raw_key=raw_key) is None
    assert revoke_url not in admin_client.get(response["Location"]).content.decode()


def test_adding_a_tenant_sets_its_budget_and_shows_its_first_key_once(admin_client, db):
    from decimal import Decimal

    from billing.models import TenantBudget
    from tenants.models import Tenant

    response = admin_client.post(
        "/admin/tenants/tenant/add/",
        {
            "name": "Initech",
            "slug": "initech",
            "is_active": "on",
            "monthly_budget_usd": "250.00",
            "daily_budget_usd": "",
            "first_key_name": "production",
            "first_key_scopes": ["chat"],
            "requests_per_minute": 60,
            "tokens_per_minute": 100000,
            "monthly_token_quota": 1000000,
            "allowed_models": "*",
            "trace_retention_days": 30,
            "store_trace_text": "on",
        },
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    tenant = Tenant.objects.get(slug="initech")
    assert TenantBudget.objects.get(tenant=tenant).monthly_budget_usd == Decimal("250.00")
    shown = admin_client.get(response["Location"]).content.decode()
    api_key = api_key_authenticate(raw_key=RAW_KEY.search(shown).group(0))
    assert api_key.tenant == tenant
    assert api_key.scopes == ["chat"]


def test_admin_quota_edit_is_audited(admin_client, tenant):
    response = admin_client.post(
        f"/admin/tenants/tenant/{tenant.pk}/change/",
        {
            "name": tenant.name,
            "slug": tenant.slug,
            "is_active": "on",
            "requests_per_minute": 77,
            "tokens_per_minute": tenant.tokens_per_minute,
            "monthly_token_quota": tenant.monthly_token_quota,
            "allowed_models": "*",
            "trace_retention_days": 14,
            "store_trace_text": "on",
            "tenants_apikey_set-TOTAL_FORMS": 0,
            "tenants_apikey_set-INITIAL_FORMS": 0,
        },
    )
    assert response.status_code in (200, 302)
    tenant.refresh_from_db()
    assert tenant.requests_per_minute == 77, response.content.decode()[:3000]
    assert (tenant.trace_retention_days, tenant.store_trace_text) == (14, True)
    event = AuditEvent.objects.get(action="tenant.update")
    assert event.changes["requests_per_minute"][1] == 77
    assert event.changes["trace_retention_days"] == [30, 14]


def test_view_only_staff_cannot_rotate_or_revoke_keys(client, tenant, make_key, django_user_model):
    from django.contrib.auth.models import Permission

    api_key, raw_key = make_key(tenant)
    viewer = django_user_model.objects.create_user("viewer", password="pw-for-tests", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_apikey"))
    client.force_login(viewer)
    for action in ("rotate_keys", "revoke_keys"):
        response = client.post("/admin/tenants/apikey/", {"action": action, "_selected_action": [api_key.pk]})
        assert not RAW_KEY.search(response.content.decode())
    assert api_key_authenticate(raw_key=raw_key) is not None
    assert ApiKey.objects.filter(tenant=tenant).count() == 1
