"""The OpenAI-compatible surface, mounted at /v1/ so `openai.OpenAI(base_url=<server>/v1)` works."""

from __future__ import annotations

from django.urls import path

from chat.api import ChatCompletionsView, ModelsView

urlpatterns = [
    path("chat/completions", ChatCompletionsView.as_view(), name="openai-chat-completions"),
    path("models", ModelsView.as_view(), name="openai-models"),
]
