from __future__ import annotations

from django.urls import path
from rest_framework.routers import SimpleRouter

from tenants.api import ApiKeyViewSet, MeView

router = SimpleRouter(trailing_slash="/?")
router.register("keys", ApiKeyViewSet, basename="api-key")

urlpatterns = [
    path("me", MeView.as_view(), name="me"),
    *router.urls,
]
