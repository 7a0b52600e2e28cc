from __future__ import annotations

from django.urls import path

from chat.api import ChatView, ConversationViewSet
from tenants.api import OptionalSlashRouter

router = OptionalSlashRouter()
router.register("conversations", ConversationViewSet, basename="conversation")

urlpatterns = [
    path("chat", ChatView.as_view(), name="chat"),
    *router.urls,
]
