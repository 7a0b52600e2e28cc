"""`Authorization: Bearer <key>` authentication and scope checks for DRF."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission

from config.logs import log_context_update
from tenants.models import ApiKey, Tenant
from tenants.services import api_key_authenticate

if TYPE_CHECKING:
    from rest_framework.request import Request
    from rest_framework.views import APIView

INVALID_KEY_MESSAGE = "Invalid API key: it is unknown, expired or revoked."


@dataclass(frozen=True)
class TenantPrincipal:
    """`request.user` for API-key requests. `request.auth` is the ApiKey itself."""

    api_key: ApiKey

    is_authenticated = True
    is_anonymous = False

    @property
    def tenant(self) -> Tenant:
        return self.api_key.tenant


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[TenantPrincipal, ApiKey] | None:
        header = get_authorization_header(request)
        if not header:
            return None
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header; expected 'Authorization: Bearer <api key>'.",
                code="invalid_authorization_header",
            )
        try:
            raw_key = token.strip().decode("ascii")
        except UnicodeDecodeError as exc:
            raise exceptions.AuthenticationFailed(INVALID_KEY_MESSAGE, code="invalid_api_key") from exc
        api_key = api_key_authenticate(raw_key=raw_key)
        if api_key is None:
            raise exceptions.AuthenticationFailed(INVALID_KEY_MESSAGE, code="invalid_api_key")
        if not api_key.tenant.is_active:
            raise exceptions.PermissionDenied("This tenant is disabled.", code="tenant_disabled")
        log_context_update(tenant=api_key.tenant.slug)
        return TenantPrincipal(api_key), api_key

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'


class HasRequiredScope(BasePermission):
    """Allows the request when the key holds the view's `required_scope` (or `admin`)."""

    def has_permission(self, request: Request, view: APIView) -> bool:
        api_key = request.auth
        if not isinstance(api_key, ApiKey):
            raise exceptions.NotAuthenticated(
                "Missing API key: send 'Authorization: Bearer <api key>'.", code="missing_api_key"
            )
        scope = view.get_required_scope() if hasattr(view, "get_required_scope") else None
        if scope is not None and not api_key.has_scope(scope):
            raise exceptions.PermissionDenied(
                f"This API key lacks the '{scope}' scope.", code="insufficient_scope"
            )
        return True


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "A tenant API key: tk_<id>_<secret>"}
