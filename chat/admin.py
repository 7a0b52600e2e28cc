"""admin for the chat app (filled by its issue)."""

from __future__ import annotations
