from __future__ import annotations

from django.urls import path

from tenants.api import ApiKeyViewSet, MeView, OptionalSlashRouter

router = OptionalSlashRouter()
router.register("keys", ApiKeyViewSet, basename="api-key")

urlpatterns = [
    path("me", MeView.as_view(), name="me"),
    *router.urls,
]
