from __future__ import annotations

from django.urls import path

from chat.api import ChatView, ConversationViewSet, DocumentViewSet
from tenants.api import OptionalSlashRouter

router = OptionalSlashRouter()
router.register("conversations", ConversationViewSet, basename="conversation")
router.register("documents", DocumentViewSet, basename="document")

urlpatterns = [
    path("chat", ChatView.as_view(), name="chat"),
    *router.urls,
]
