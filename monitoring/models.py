"""models for the monitoring app (filled by its issue)."""

from __future__ import annotations
