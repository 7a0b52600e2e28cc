"""services for the prompts app (filled by its issue)."""

from __future__ import annotations
