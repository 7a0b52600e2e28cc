"""Walks every API URL pattern that addresses an object and proves another tenant gets 404.

A new endpoint with a path parameter fails this test until it registers a factory in
OBJECT_FACTORIES below, so no object endpoint ships without its cross-tenant check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db.models import Model
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from tenants.models import Scope, Tenant
from tenants.services import api_key_create
from tests.conftest import client_with_key

HTTP_METHODS = ["get", "post", "put", "patch", "delete"]


def _api_key(tenant: Tenant) -> tuple[dict[str, str], Model]:
    api_key, _ = api_key_create(tenant=tenant, name="victim", scopes=[Scope.CHAT], actor="test")
    return {"id": api_key.public_id}, api_key


# route name -> creates an object owned by the tenant; returns the URL kwargs and the object.
OBJECT_FACTORIES: dict[str, Callable[[Tenant], tuple[dict[str, str], Model]]] = {
    "api-key-detail": _api_key,
    "api-key-revoke": _api_key,
    "api-key-rotate": _api_key,
}


def iter_patterns(patterns: list[Any], prefix: str = "") -> list[tuple[str, URLPattern]]:
    found = []
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            found.extend(iter_patterns(entry.url_patterns, route))
        elif isinstance(entry, URLPattern):
            found.append((route, entry))
    return found


def allowed_methods(pattern: URLPattern) -> list[str]:
    callback = pattern.callback
    actions = getattr(callback, "actions", None)
    if actions:
        return [method for method in HTTP_METHODS if method in actions]
    view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    return [method for method in HTTP_METHODS if view_class is not None and hasattr(view_class, method)]


def object_routes() -> list[tuple[str, URLPattern]]:
    routes = []
    for route, pattern in iter_patterns(get_resolver().url_patterns):
        is_api = route.startswith(("api/v1/", "^api/v1/", "v1/", "^v1/"))
        if is_api and pattern.pattern.regex.groupindex:
            routes.append((route, pattern))
    return routes


def test_every_object_route_has_an_ownership_factory():
    missing = [
        f"{route} (name={pattern.name})"
        for route, pattern in object_routes()
        if pattern.name not in OBJECT_FACTORIES
    ]
    assert not missing, f"register these in OBJECT_FACTORIES: {missing}"
    assert object_routes(), "the walk found no object routes at all"


def test_other_tenants_objects_are_404_on_every_method(tenant, other_tenant):
    _, intruder_raw = api_key_create(tenant=other_tenant, name="intruder", scopes=[Scope.ADMIN], actor="test")
    intruder = client_with_key(intruder_raw)
    checked = 0
    for _, pattern in object_routes():
        for method in allowed_methods(pattern):
            kwargs, owned = OBJECT_FACTORIES[pattern.name](tenant)
            before = type(owned).objects.filter(pk=owned.pk).values().get()
            url = reverse(pattern.name, kwargs=kwargs)
            response = getattr(intruder, method)(url, {}, format="json")
            assert response.status_code == 404, f"{method.upper()} {url} gave {response.status_code}"
            assert response.json()["error"]["type"] == "not_found_error"
            assert type(owned).objects.filter(pk=owned.pk).values().get() == before
            checked += 1
    assert checked >= 3
