from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from monitoring.api import HealthView, LivenessView, metrics_view

handler400 = "tenants.errors.handler400"
handler404 = "tenants.errors.handler404"
handler500 = "tenants.errors.handler500"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health", HealthView.as_view(), name="health"),
    path("health/live", LivenessView.as_view(), name="health-live"),
    path("metrics", metrics_view, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/v1/", include("tenants.urls")),
    path("api/v1/", include("prompts.urls")),
    path("api/v1/", include("billing.urls")),
    path("api/v1/", include("chat.urls")),
    path("api/v1/", include("monitoring.urls")),
    path("v1/", include("chat.openai_urls")),
]
