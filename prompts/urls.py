from __future__ import annotations

from prompts.api import PromptViewSet
from tenants.api import OptionalSlashRouter

router = OptionalSlashRouter()
router.register("prompts", PromptViewSet, basename="prompt")

urlpatterns = router.urls
