from __future__ import annotations

from monitoring.api import FeedbackViewSet, TraceViewSet
from tenants.api import OptionalSlashRouter

router = OptionalSlashRouter()
router.register("feedback", FeedbackViewSet, basename="feedback")
router.register("traces", TraceViewSet, basename="trace")

urlpatterns = [*router.urls]
