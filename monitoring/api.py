from __future__ import annotations

import hmac
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from prometheus_client import CONTENT_TYPE_LATEST
from rest_framework import mixins
from rest_framework.exceptions import ValidationError
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from monitoring.health import run_health_checks, status_sections
from monitoring.metrics import metrics_exposition
from monitoring.models import Feedback, Trace
from monitoring.selectors import feedback_list, trace_detail_queryset, trace_list
from monitoring.serializers import (
    FeedbackCreateSerializer,
    FeedbackListQuerySerializer,
    FeedbackSerializer,
    TraceDetailSerializer,
    TraceListQuerySerializer,
    TraceSerializer,
)
from monitoring.services import feedback_submit
from tenants.api import TenantScopedViewSet
from tenants.errors import json_error_response
from tenants.models import Scope
from tenants.pagination import CursorPagination
from tenants.serializers import RequestSerializer


class HealthView(APIView):
    """Readiness: 200 only when every dependency answers, 503 naming the ones that do not."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        summary="Dependency health (database, pgvector, cache, Celery broker)",
        auth=[],
        responses={200: OpenApiTypes.OBJECT, 503: OpenApiTypes.OBJECT},
    )
    def get(self, request: Request) -> Response:
        checks = run_health_checks()
        failed = [name for name, result in checks.items() if result["status"] != "ok"]
        body = {
            "status": "fail" if failed else "ok",
            "failed": failed,
            "checks": checks,
            **status_sections(),
        }
        return Response(body, status=503 if failed else 200, headers={"Cache-Control": "no-store"})


class LivenessView(APIView):
    """Liveness: the process answers HTTP. Touches no dependency."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(summary="Liveness probe", auth=[], responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request) -> Response:
        return Response({"status": "ok"})


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition; requires METRICS_BEARER_TOKEN when one is configured."""
    token = settings.METRICS_BEARER_TOKEN
    if token:
        supplied = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(supplied.encode(), token.encode()):
            return json_error_response(401, "Metrics need 'Authorization: Bearer <METRICS_BEARER_TOKEN>'.")
    return HttpResponse(metrics_exposition(), content_type=CONTENT_TYPE_LATEST)


# --- feedback and traces ------------------------------------------------------------------------------


def query_filters(request: Request, serializer_class: type[RequestSerializer]) -> dict[str, Any]:
    """The validated query string; a parameter the endpoint does not know is a 400, not ignored (a
    misspelt filter would otherwise return everything)."""
    known = set(serializer_class().fields) | PAGINATION_PARAMETERS
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise ValidationError(
            {name: f"Unknown query parameter; known: {', '.join(sorted(known))}." for name in unknown}
        )
    query = serializer_class(data=request.query_params)
    query.is_valid(raise_exception=True)
    return dict(query.validated_data)


PAGINATION_PARAMETERS = {"cursor", CursorPagination.page_size_query_param}
TRACE_ID_PATTERN = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"


class FeedbackViewSet(mixins.ListModelMixin, TenantScopedViewSet):
    """End users' scores of answers: written with a `chat` key (the one that asked), read with
    `traces:read`."""

    model = Feedback
    pagination_class = CursorPagination

    def get_required_scope(self) -> str | None:
        return Scope.CHAT if self.request.method == "POST" else Scope.TRACES_READ

    def scoped_queryset(self) -> QuerySet[Feedback]:
        return feedback_list(
            tenant=self.tenant, filters=query_filters(self.request, FeedbackListQuerySerializer)
        )

    @extend_schema(
        parameters=[FeedbackListQuerySerializer],
        responses=FeedbackSerializer(many=True),
        summary="Feedback, newest first (cursor pagination)",
        operation_id="feedback_list",
    )
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(FeedbackSerializer(page, many=True).data)

    @extend_schema(
        request=FeedbackCreateSerializer,
        responses={
            201: FeedbackSerializer,
            200: FeedbackSerializer,
            404: OpenApiResponse(description="No such trace for this tenant (or not written yet: retry)."),
        },
        summary="Score an answer: 201 when new, 200 when it changes this user's earlier score on the metric",
    )
    def create(self, request: Request) -> Response:
        params = FeedbackCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        feedback, created = feedback_submit(
            tenant=self.tenant,
            trace=data["trace_id"],
            name=data["name"],
            score=data["score"],
            comment=data.get("comment"),
            user=data.get("user"),
        )
        return Response(FeedbackSerializer(feedback).data, status=201 if created else 200)


class TraceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    """The tenant's own traces: what was asked of which model, its cost, timing, spans and feedback."""

    model = Trace
    required_scope = Scope.TRACES_READ
    pagination_class = CursorPagination
    lookup_value_regex = TRACE_ID_PATTERN

    def scoped_queryset(self) -> QuerySet[Trace]:
        if self.action == "retrieve":
            return trace_detail_queryset(tenant=self.tenant)
        return trace_list(tenant=self.tenant, filters=query_filters(self.request, TraceListQuerySerializer))

    @extend_schema(
        parameters=[TraceListQuerySerializer],
        responses=TraceSerializer(many=True),
        summary="Traces, newest first (cursor pagination)",
        operation_id="traces_list",
    )
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(TraceSerializer(page, many=True).data)

    @extend_schema(
        parameters=[OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
        responses=TraceDetailSerializer,
        summary="A trace with its spans, feedback, and question and answer (or their sizes and hashes)",
    )
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(TraceDetailSerializer(self.get_object()).data)
