"""Tenant API for money, scope `billing:read`: budget, live usage, invoices (JSON, HTML, PDF, CSV)."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import QuerySet
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins
from rest_framework.decorators import action
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from billing.documents import invoice_csv, invoice_data, invoice_filename, invoice_html, invoice_pdf
from billing.models import Invoice
from billing.selectors import budget_status, tenant_invoices, usage_summary
from billing.serializers import UsageQuerySerializer
from tenants.api import TenantAPIView, TenantScopedViewSet
from tenants.models import Scope


class BudgetView(TenantAPIView):
    required_scope = Scope.BILLING_READ

    @extend_schema(
        responses=OpenApiTypes.OBJECT,
        summary="This month's budget, spent, reserved, remaining, thresholds and alerts sent",
    )
    def get(self, request: Request) -> Response:
        return Response(budget_status(tenant=self.tenant))


class UsageView(TenantAPIView):
    required_scope = Scope.BILLING_READ

    @extend_schema(
        parameters=[UsageQuerySerializer],
        responses=OpenApiTypes.OBJECT,
        summary="Live usage between two dates, by day or by model",
    )
    def get(self, request: Request) -> Response:
        params = UsageQuerySerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        rows = usage_summary(
            tenant=self.tenant, start=data["start"], end=data["end"], group_by=data["group_by"]
        )
        return Response(
            {"from": data["start"], "to": data["end"], "group_by": data["group_by"], "results": rows}
        )


class DownloadNegotiation(BaseContentNegotiation):
    """For the invoice downloads, which answer in their own type whatever the client accepts
    (`Accept: application/pdf` was a 406: the API's one renderer is JSON); errors stay JSON."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        return next(iter(parsers), None)

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderer = next(iter(renderers))
        return renderer, renderer.media_type


def document(content: bytes | str, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class InvoiceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    model = Invoice
    required_scope = Scope.BILLING_READ
    lookup_value_regex = r"[0-9]+"

    def scoped_queryset(self) -> QuerySet[Invoice]:
        return tenant_invoices(tenant=self.tenant)

    @extend_schema(
        responses=OpenApiTypes.OBJECT, summary="Issued invoices, newest first", operation_id="invoices_list"
    )
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response([invoice_data(invoice) for invoice in page or []])

    @extend_schema(
        parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH)], responses=OpenApiTypes.OBJECT
    )
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(invoice_data(self.get_object()))

    @extend_schema(
        parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH)],
        responses={(200, "application/pdf"): OpenApiTypes.BINARY},
    )
    @action(detail=True, methods=["get"], content_negotiation_class=DownloadNegotiation)
    def pdf(self, request: Request, pk: str) -> HttpResponse:
        invoice = self.get_object()
        return document(invoice_pdf(invoice), "application/pdf", invoice_filename(invoice, "pdf"))

    @extend_schema(
        parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH)],
        responses={(200, "text/csv"): OpenApiTypes.STR},
    )
    @action(detail=True, methods=["get"], content_negotiation_class=DownloadNegotiation)
    def csv(self, request: Request, pk: str) -> HttpResponse:
        invoice = self.get_object()
        return document(invoice_csv(invoice), "text/csv; charset=utf-8", invoice_filename(invoice, "csv"))

    @extend_schema(
        parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH)],
        responses={(200, "text/html"): OpenApiTypes.STR},
    )
    @action(detail=True, methods=["get"], content_negotiation_class=DownloadNegotiation)
    def html(self, request: Request, pk: str) -> HttpResponse:
        return HttpResponse(invoice_html(self.get_object()), content_type="text/html; charset=utf-8")
