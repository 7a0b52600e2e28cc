from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django_prometheus.exports import ExportToDjangoView
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from monitoring.health import run_health_checks, status_sections
from tenants.errors import json_error_response


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
    return ExportToDjangoView(request)
