"""Per-process caches of immutable snapshots that stay coherent across workers through Redis.

A snapshot is served from process memory; at most every `check_seconds` the process compares the
snapshot's stamp with the one in Redis (one GET) and reloads when it changed. Writers call
`invalidate()`, which drops the local entries at once and publishes a new stamp now and after
commit, so every worker sees a change within `check_seconds` and the writing process at once.
Used for hot-path data that changes rarely: prompt snapshots, the price table.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from django.core.cache import cache
from django.db import transaction

from tenants.errors import CACHE_ERRORS

logger = logging.getLogger(__name__)

V = TypeVar("V")

UNAVAILABLE_STAMP_PREFIX = "unavailable:"  # a stamp made up while Redis is away: never equal to another


@dataclass
class _Entry(Generic[V]):
    value: V
    stamp: str | None
    checked_at: float


class StampedLocalCache(Generic[V]):
    def __init__(self, namespace: str, check_seconds: Callable[[], float]) -> None:
        self.namespace = namespace
        self.check_seconds = check_seconds
        # group -> key -> entry. Gunicorn threads share it: a group is dropped with one atomic pop,
        # never by iterating while another thread inserts.
        self._groups: dict[str, dict[Hashable, _Entry[V]]] = {}

    def _stamp_key(self, group: str) -> str:
        return f"stamp:{self.namespace}:{group}"

    def _current_stamp(self, group: str) -> str | None:
        try:
            stamp: str | None = cache.get(self._stamp_key(group))
        except CACHE_ERRORS:
            logger.warning("cache unavailable; %s snapshots are reloaded every time", self.namespace)
            return UNAVAILABLE_STAMP_PREFIX + uuid.uuid4().hex
        return stamp

    def stamp(self, group: str) -> str | None:
        """The group's current stamp in Redis (None before its first invalidation): changes with every
        invalidation, so it can key data derived from the group elsewhere."""
        return self._current_stamp(group)

    def get(self, group: str, key: Hashable, load: Callable[[], V]) -> V:
        """The snapshot for (group, key); `group` is what one invalidation covers."""
        now = time.monotonic()
        entry = self._groups.get(group, {}).get(key)
        if entry is not None and now - entry.checked_at < self.check_seconds():
            return entry.value
        stamp = self._current_stamp(group)
        if entry is not None and entry.stamp == stamp:
            entry.checked_at = now
            return entry.value
        value = load()
        self._groups.setdefault(group, {})[key] = _Entry(value, stamp, now)
        return value

    def invalidate(self, group: str) -> None:
        def publish() -> None:
            try:
                self._groups.pop(group, None)
            finally:
                try:
                    cache.set(self._stamp_key(group), uuid.uuid4().hex, timeout=None)
                except CACHE_ERRORS:
                    logger.exception(
                        "could not publish a %s change; workers re-check on their own", self.namespace
                    )

        publish()
        transaction.on_commit(publish)

    def clear(self) -> None:
        self._groups.clear()
