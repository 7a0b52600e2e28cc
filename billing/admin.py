"""admin for the billing app (filled by its issue)."""

from __future__ import annotations
