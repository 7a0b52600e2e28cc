from __future__ import annotations

from django.urls import path

from billing.api import BudgetView, InvoiceViewSet, UsageView
from tenants.api import OptionalSlashRouter

router = OptionalSlashRouter()
router.register("invoices", InvoiceViewSet, basename="invoice")

urlpatterns = [
    path("budget", BudgetView.as_view(), name="budget"),
    path("usage", UsageView.as_view(), name="usage"),
    *router.urls,
]
