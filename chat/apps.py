"""Conversations, the chat pipeline, providers and the fallback chain, RAG."""

from __future__ import annotations

from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "chat"
    verbose_name = "Chat"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from chat import checks  # noqa: F401  (registers the embedding checks)
        from chat.metrics import CircuitStateCollector
        from chat.selectors import known_circuits
        from monitoring.health import register_status_section
        from monitoring.metrics import SCRAPE_TIME

        register_status_section("circuits", lambda: {c.target: c.state for c in known_circuits()})
        SCRAPE_TIME.register(CircuitStateCollector())
