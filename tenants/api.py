"""The tenant-scoped API base classes, and the tenant's own endpoints (/me, /keys)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

from django.db.models import Model, QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.metadata import SimpleMetadata
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import SimpleRouter
from rest_framework.views import APIView

from tenants.models import ApiKey, Scope, Tenant
from tenants.openapi import error_responses
from tenants.ratelimits import PolicyUsage, rate_limit_headers, request_rate_limits_enforce
from tenants.selectors import api_key_list, tenant_usage_counters
from tenants.serializers import (
    ApiKeyCreateSerializer,
    ApiKeyRotateSerializer,
    ApiKeySerializer,
    ApiKeyWithSecretSerializer,
    MeSerializer,
    QuotaSerializer,
    TenantSerializer,
)
from tenants.services import PUBLIC_ID_PATTERN, api_key_create, api_key_revoke, api_key_rotate


class ApiMetadata(SimpleMetadata):
    """OPTIONS answers with the view's name, description and media types, without DRF's form of each
    writable field: that needs a `serializer_class`, which our views do not all have (a 500), and the
    fields are in /api/schema/."""

    def determine_actions(self, request: Request, view: APIView) -> dict[str, Any]:
        return {}


class TenantAPIView(APIView):
    """Base of every tenant endpoint: API-key auth, scope check, rate limits, and `self.tenant`.

    `required_scope` (or `get_required_scope()`) names the scope a key needs; None means any key.
    """

    required_scope: ClassVar[str | None] = None
    metadata_class = ApiMetadata
    rate_limit_usages: list[PolicyUsage]

    def get_required_scope(self) -> str | None:
        return self.required_scope

    @property
    def tenant(self) -> Tenant:
        assert isinstance(self.request.auth, ApiKey)
        return self.request.auth.tenant

    @property
    def api_key(self) -> ApiKey:
        assert isinstance(self.request.auth, ApiKey)
        return self.request.auth

    @property
    def actor(self) -> str:
        return f"api_key:{self.api_key.public_id}"

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        self.rate_limit_usages = []
        super().initial(request, *args, **kwargs)
        self.rate_limit_usages = request_rate_limits_enforce(request, api_key=self.api_key)

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        for name, value in rate_limit_headers(getattr(self, "rate_limit_usages", [])).items():
            response.headers.setdefault(name, value)
        return response


class TenantScopedViewSet(TenantAPIView, viewsets.GenericViewSet):
    """Subclasses set `model` and implement `scoped_queryset()`; `get_queryset()` adds the tenant filter.

    Overriding `get_queryset()` is refused at class creation, so an unscoped query cannot slip in.
    """

    model: ClassVar[type[Model]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "get_queryset" in cls.__dict__:
            raise TypeError(f"{cls.__name__} must implement scoped_queryset(), not get_queryset()")

    def scoped_queryset(self) -> QuerySet[Any]:
        raise NotImplementedError

    def get_queryset(self) -> QuerySet[Any]:
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular inspecting, no request
            return self.model._default_manager.none()
        return self.scoped_queryset().filter(tenant=self.tenant)


class OptionalSlashRouter(SimpleRouter):
    """Routes without a trailing slash, as documented, that also accept one. Every app's router."""

    def __init__(self) -> None:
        super().__init__()
        self.trailing_slash = "/?"


NO_STORE = {"Cache-Control": "no-store"}


class MeView(TenantAPIView):
    @extend_schema(responses=MeSerializer, summary="The calling tenant, its quotas and this minute's usage")
    def get(self, request: Request) -> Response:
        data = {
            "tenant": TenantSerializer(self.tenant).data,
            "key": ApiKeySerializer(self.api_key).data,
            "quotas": QuotaSerializer(self.tenant).data,
            "usage": tenant_usage_counters(tenant=self.tenant, request_usages=self.rate_limit_usages),
        }
        return Response(data)


class ApiKeyViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    model = ApiKey
    required_scope = Scope.ADMIN
    serializer_class = ApiKeySerializer
    lookup_field = "public_id"
    lookup_url_kwarg = "id"
    lookup_value_regex = PUBLIC_ID_PATTERN  # anything else (a NUL...) is a 404 without a query

    def scoped_queryset(self) -> QuerySet[ApiKey]:
        return api_key_list(tenant=self.tenant)

    @extend_schema(
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyWithSecretSerializer},
        summary="Create a key; the response is the only time the raw key is shown",
    )
    def create(self, request: Request) -> Response:
        params = ApiKeyCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        api_key, raw_key = api_key_create(tenant=self.tenant, actor=self.actor, **params.validated_data)
        return self._created_with_secret(api_key, raw_key)

    @extend_schema(
        request=None, responses={200: ApiKeySerializer, **error_responses(409)}, summary="Revoke a key now"
    )
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, id: str) -> Response:
        api_key = api_key_revoke(tenant=self.tenant, api_key=self.get_object(), actor=self.actor)
        return Response(ApiKeySerializer(api_key).data)

    @extend_schema(
        request=ApiKeyRotateSerializer,
        responses={201: ApiKeyWithSecretSerializer, **error_responses(409)},
        summary="Replace a key; the old one keeps working for grace_seconds",
    )
    @action(detail=True, methods=["post"])
    def rotate(self, request: Request, id: str) -> Response:
        params = ApiKeyRotateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        grace_seconds = params.validated_data.get("grace_seconds")
        grace = None if grace_seconds is None else timedelta(seconds=grace_seconds)
        new_key, raw_key = api_key_rotate(
            tenant=self.tenant, api_key=self.get_object(), actor=self.actor, grace=grace
        )
        return self._created_with_secret(new_key, raw_key)

    def _created_with_secret(self, api_key: ApiKey, raw_key: str) -> Response:
        data = ApiKeyWithSecretSerializer(api_key).data
        data["key"] = raw_key
        return Response(data, status=status.HTTP_201_CREATED, headers=NO_STORE)
