"""Versioned prompt templates, labels and A/B experiments."""

from __future__ import annotations

from django.apps import AppConfig


class PromptsConfig(AppConfig):
    name = "prompts"
    verbose_name = "Prompts"
    default_auto_field = "django.db.models.BigAutoField"
