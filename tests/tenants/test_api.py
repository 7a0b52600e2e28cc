from __future__ import annotations

import pytest

from tenants.models import ApiKey, AuditEvent, Scope
from tenants.services import hash_api_key
from tests.conftest import client_with_key, database_unreachable, expire_now


def test_me_returns_tenant_quotas_and_usage(tenant, make_key):
    api_key, raw_key = make_key(tenant, scopes=[Scope.CHAT], requests_per_minute=50)
    client = client_with_key(raw_key)
    client.get("/api/v1/me")
    response = client.get("/api/v1/me")
    assert response.status_code == 200
    body = response.json()
    assert body["tenant"]["slug"] == "acme"
    assert body["key"]["id"] == api_key.public_id
    assert "key" not in body["key"] or not body["key"].get("key")
    assert body["quotas"]["requests_per_minute"] == tenant.requests_per_minute
    assert body["quotas"]["monthly_token_quota"] == tenant.monthly_token_quota
    assert body["usage"]["requests_this_minute"]["used"] == 2
    assert body["usage"]["key_requests_this_minute"] == {
        "used": 2,
        "limit": 50,
        "remaining": 48,
        "reset_seconds": body["usage"]["key_requests_this_minute"]["reset_seconds"],
    }
    assert body["usage"]["tokens_this_minute"] == {
        "used": 0,
        "limit": tenant.tokens_per_minute,
        "remaining": tenant.tokens_per_minute,
        "reset_seconds": body["usage"]["tokens_this_minute"]["reset_seconds"],
    }


def test_create_key_shows_secret_once_and_the_key_works(api_client, tenant):
    response = api_client.post("/api/v1/keys", {"name": "backend", "scopes": ["chat"]}, format="json")
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    created = response.json()
    raw_key = created["key"]
    assert raw_key.startswith(f"tk_{created['id']}_")
    assert created["scopes"] == ["chat"]
    listed = api_client.get("/api/v1/keys").json()["results"]
    assert {item["id"] for item in listed} >= {created["id"]}
    assert all("key" not in item for item in listed)
    assert raw_key not in api_client.get(f"/api/v1/keys/{created['id']}").content.decode()
    assert client_with_key(raw_key).get("/api/v1/me").status_code == 200
    assert AuditEvent.objects.filter(action="api_key.create", target_id=created["id"]).exists()


def test_revoke_via_api(api_client, tenant, make_key):
    victim, raw_key = make_key(tenant, scopes=[Scope.CHAT])
    response = api_client.post(f"/api/v1/keys/{victim.public_id}/revoke")
    assert response.status_code == 200
    assert response.json()["status"] == "revoked"
    assert client_with_key(raw_key).get("/api/v1/me").status_code == 401
    again = api_client.post(f"/api/v1/keys/{victim.public_id}/revoke")
    assert again.status_code == 409
    assert again.json()["error"]["type"] == "conflict_error"


def test_rotate_via_api_with_grace(api_client, tenant, make_key):
    old, old_raw = make_key(tenant, scopes=[Scope.CHAT])
    response = api_client.post(f"/api/v1/keys/{old.public_id}/rotate", {"grace_seconds": 600}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert body["rotated_from"] == old.public_id
    assert client_with_key(body["key"]).get("/api/v1/me").status_code == 200
    assert client_with_key(old_raw).get("/api/v1/me").status_code == 200
    old.refresh_from_db()
    assert old.expires_at is not None


def test_a_rotated_key_in_its_grace_says_it_is_expiring(api_client, tenant, make_key):
    old, _ = make_key(tenant, scopes=[Scope.CHAT])
    assert api_client.get(f"/api/v1/keys/{old.public_id}").json()["status"] == "active"
    new = api_client.post(f"/api/v1/keys/{old.public_id}/rotate", {"grace_seconds": 600}, format="json")
    listed = {key["id"]: key for key in api_client.get("/api/v1/keys").json()["results"]}
    assert listed[old.public_id]["status"] == "expiring"
    assert listed[old.public_id]["expires_at"] is not None
    assert listed[new.json()["id"]]["status"] == "active"


def test_an_unknown_key_costs_one_query_then_none_until_a_key_takes_its_id(
    tenant, make_key, django_assert_num_queries
):
    from tenants.services import PUBLIC_ID_LENGTH

    public_id = "z" * PUBLIC_ID_LENGTH
    client = client_with_key(f"tk_{public_id}_not-a-secret")
    with django_assert_num_queries(1):
        assert client.get("/api/v1/me").status_code == 401
    for _ in range(3):
        with django_assert_num_queries(0):
            assert client.get("/api/v1/me").status_code == 401
    api_key, raw_key = make_key(tenant, scopes=[Scope.CHAT])
    ApiKey.objects.filter(pk=api_key.pk).update(public_id=public_id)
    api_key.refresh_from_db()
    api_key.save()  # as any save does, this drops the id's cache entries, the miss included
    raw_key = raw_key.replace(raw_key.split("_")[1], public_id)
    ApiKey.objects.filter(pk=api_key.pk).update(secret_hash=hash_api_key(raw_key))
    assert client_with_key(raw_key).get("/api/v1/me").status_code == 200


def test_rotate_with_zero_grace_via_api_ends_old_key(api_client, tenant, make_key):
    old, old_raw = make_key(tenant, scopes=[Scope.CHAT])
    response = api_client.post(f"/api/v1/keys/{old.public_id}/rotate", {"grace_seconds": 0}, format="json")
    assert response.status_code == 201
    assert client_with_key(old_raw).get("/api/v1/me").status_code == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/keys"),
        ("post", "/api/v1/keys"),
        ("post", "/api/v1/keys/{id}/revoke"),
        ("post", "/api/v1/keys/{id}/rotate"),
    ],
)
def test_key_management_needs_admin_scope(tenant, make_key, method, path):
    api_key, raw_key = make_key(tenant, scopes=[Scope.CHAT, Scope.DOCUMENTS, Scope.BILLING_READ])
    response = getattr(client_with_key(raw_key), method)(
        path.format(id=api_key.public_id), {"name": "x", "scopes": ["chat"]}, format="json"
    )
    assert response.status_code == 403
    assert response.json()["error"] == {
        "type": "permission_error",
        "message": "This API key lacks the 'admin' scope.",
        "param": None,
        "code": "insufficient_scope",
    }
    api_key.refresh_from_db()
    assert api_key.status == "active"
    assert ApiKey.objects.filter(tenant=tenant).count() == 1


def test_missing_key_is_401_with_www_authenticate(db):
    response = client_with_key(None).get("/api/v1/me")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize("state", ["unknown", "revoked", "expired", "wrong-secret", "nul-in-id"])
def test_bad_keys_get_the_same_401(tenant, make_key, state):
    api_key, raw_key = make_key(tenant, scopes=[Scope.CHAT])
    if state == "unknown":
        raw_key = "tk_aaaaaaaaaaaa_" + "x" * 43
    elif state == "nul-in-id":  # PostgreSQL cannot take a NUL in a query: it must not get one
        raw_key = "tk_aaaaaaaaaaa\x00_" + "x" * 43
    elif state == "revoked":
        api_client = client_with_key(make_key(tenant)[1])
        api_client.post(f"/api/v1/keys/{api_key.public_id}/revoke")
    elif state == "expired":
        expire_now(api_key)
    else:
        raw_key = raw_key[:-4] + "AAAA"
    response = client_with_key(raw_key).get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["error"] == {
        "type": "authentication_error",
        "message": "Invalid API key: it is unknown, expired or revoked.",
        "param": None,
        "code": "invalid_api_key",
    }


def test_malformed_authorization_header_is_401(db):
    client = client_with_key(None)
    client.credentials(HTTP_AUTHORIZATION="Basic dXNlcjpwYXNz")
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert "Bearer" in response.json()["error"]["message"]


def test_disabled_tenant_is_403(tenant, make_key):
    _, raw_key = make_key(tenant)
    tenant.is_active = False
    tenant.save()
    response = client_with_key(raw_key).get("/api/v1/me")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "tenant_disabled"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"scopes": ["chat"]}, "name"),
        ({"name": "x"}, "scopes"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": "chat"}, "scopes"),
        ({"name": "x", "scopes": ["root"]}, "scopes.0"),
        ({"name": ["x"], "scopes": ["chat"]}, "name"),
        ({"name": "x", "scopes": ["chat"], "expires_at": "next tuesday"}, "expires_at"),
        ({"name": "x", "scopes": ["chat"], "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"name": "x", "scopes": ["chat"], "requests_per_minute": 0}, "requests_per_minute"),
        ({"name": "x" * 101, "scopes": ["chat"]}, "name"),
    ],
)
def test_bad_key_input_is_a_clear_400_that_changes_nothing(api_client, tenant, body, param):
    before = ApiKey.objects.count()
    response = api_client.post("/api/v1/keys", body, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"].startswith(param)
    assert ApiKey.objects.count() == before


def test_bad_rotate_grace_is_400(api_client, tenant, make_key):
    api_key, _ = make_key(tenant)
    before = ApiKey.objects.count()
    for grace in (-1, 10**9, "soon"):
        response = api_client.post(
            f"/api/v1/keys/{api_key.public_id}/rotate", {"grace_seconds": grace}, format="json"
        )
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "grace_seconds"
    assert ApiKey.objects.count() == before
    api_key.refresh_from_db()
    assert api_key.expires_at is None


def test_malformed_json_is_400(api_client):
    response = api_client.post("/api/v1/keys", data='{"name": "x", ', content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "JSON parse error" in response.json()["error"]["message"]


def test_non_object_json_is_400(api_client):
    response = api_client.post("/api/v1/keys", data="[1, 2]", content_type="application/json")
    assert response.status_code == 400


def test_wrong_content_type_is_415(api_client):
    response = api_client.post(
        "/api/v1/keys", data="name=x", content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 415
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_oversized_body_is_413_before_parsing(api_client, settings):
    settings.API_MAX_REQUEST_BYTES = 1000
    response = api_client.post("/api/v1/keys", {"name": "x" * 2000, "scopes": ["chat"]}, format="json")
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"
    assert ApiKey.objects.count() == 1


def test_wrong_method_is_405_json(api_client):
    response = api_client.delete("/api/v1/me")
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_api_route_is_404_json(api_client):
    response = api_client.get("/api/v1/does-not-exist")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("debug", [True, False])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/does-not-exist"),
        ("post", "/v1/nothing/here"),
        ("get", "/api/"),
        ("delete", "/v1/"),
        ("get", "/api/v1/keys/not-a-key/revoke/extra"),
    ],
)
def test_every_unknown_api_path_is_404_json_whatever_debug_is(api_client, settings, debug, method, path):
    """With DEBUG on (`make run`), Django answered its technical 404 page, HTML listing every URL."""
    settings.DEBUG = debug
    response = getattr(api_client, method)(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == {
        "type": "not_found_error",
        "message": f"No route for {path}.",
        "param": None,
        "code": "not_found",
    }


@pytest.mark.parametrize("debug", [True, False])
def test_wrong_method_and_slash_redirect_are_kept_whatever_debug_is(api_client, settings, debug):
    settings.DEBUG = debug
    response = api_client.put("/api/v1/chat", {"message": "hi"}, format="json")
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert api_client.get("/api/schema").status_code == 301  # APPEND_SLASH still applies first


def test_unknown_key_id_is_404_json(api_client):
    response = api_client.post("/api/v1/keys/nosuchkey123/revoke")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize("key_id", ["%00", "a%00bcdefghijk", "ABCDEFGHIJKL", "abc", "a" * 13])
def test_a_malformed_key_id_is_404_json_on_every_key_route(api_client, key_id):
    for method, path in (
        ("get", f"/api/v1/keys/{key_id}"),
        ("post", f"/api/v1/keys/{key_id}/revoke"),
        ("post", f"/api/v1/keys/{key_id}/rotate"),
    ):
        response = getattr(api_client, method)(path)
        assert response.status_code == 404, (path, response.content)
        assert response.json()["error"]["type"] == "not_found_error"


def test_trailing_slash_is_accepted(api_client):
    assert api_client.get("/api/v1/keys/").status_code == 200


def test_openapi_schema_and_docs_are_served(db, client):
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    text = schema.content.decode()
    assert "/api/v1/keys/{id}/rotate" in text
    assert "bearer" in text
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert b"swagger-ui" in docs.content
    assert b"cdn.jsdelivr" not in docs.content


def test_huge_per_key_limit_is_400(api_client):
    response = api_client.post(
        "/api/v1/keys", {"name": "x", "scopes": ["chat"], "requests_per_minute": 3_000_000_000}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "requests_per_minute"


def test_an_unreachable_database_is_a_503_with_retry_after(transactional_db, tenant, make_key, caplog):
    """Before: a 500 for every call. The key lookup (DRF's authentication) is the first query."""
    _, raw_key = make_key(tenant)
    client = client_with_key(raw_key)
    with database_unreachable() as port:
        responses = [
            client.get("/api/v1/me"),
            client.post("/api/v1/chat", {"message": "hello"}, format="json"),
            client.get("/v1/models"),
        ]
    for response in responses:
        assert response.status_code == 503, response.content
        assert response["Retry-After"] == "5"
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("api_error", "service_unavailable")
        assert "127.0.0.1" not in response.content.decode()
        assert str(port) not in response.content.decode()
    logged = [record for record in caplog.records if record.getMessage().startswith("database unavailable")]
    assert len(logged) == 3
    assert str(port) in str(logged[0].exc_info[1])  # the detail is in the log
    assert client.get("/api/v1/me").status_code == 200  # and back once the database is
