"""Recording traces: spans are collected in memory during a request and written in one go at the end,
so tracing adds no database round trip per span on the hot path."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, connection, transaction
from django.utils import timezone
from prometheus_client import Counter, Histogram

from monitoring.models import Span, Trace, TraceStatus
from tenants.database import ASYNC_COMMIT_CTE, async_commit_param
from tenants.models import Tenant

REQUESTS = Counter("llm_requests_total", "Chat requests", ["endpoint", "provider", "model", "status"])
TOKENS = Counter("llm_tokens_total", "Tokens", ["provider", "model", "kind"])
COST = Counter("llm_cost_usd_total", "Cost charged, USD", ["provider", "model"])
LATENCY = Histogram(
    "llm_request_seconds",
    "Chat request latency",
    ["endpoint"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
TTFT = Histogram(
    "llm_time_to_first_token_seconds",
    "Time to first streamed token",
    ["provider"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
logger = logging.getLogger(__name__)

# The trace row and its spans (sent as one JSON array) in one statement, committed without waiting for
# the disk (tenants/database.py): telemetry may be lost in an OS crash, the ledger may not. The columns
# come from the models, never from a request.
TRACE_FIELDS = Trace._meta.concrete_fields
INSERT_TRACE_SQL = f"""
WITH {ASYNC_COMMIT_CTE},
trace AS (
    INSERT INTO {Trace._meta.db_table} ({", ".join(str(field.column) for field in TRACE_FIELDS)})
    SELECT {", ".join(f"%({field.column})s" for field in TRACE_FIELDS)} FROM async_commit
    RETURNING id
)
INSERT INTO {Span._meta.db_table} (trace_id, ordinal, name, status, start_ms, duration_ms, attributes)
SELECT trace.id, span.ordinal, span.name, span.status, span.start_ms, span.duration_ms, span.attributes
FROM trace, jsonb_to_recordset(%(spans)s::jsonb) AS span(
    ordinal int, name text, status text, start_ms float8, duration_ms float8, attributes jsonb)
"""  # noqa: S608
ATTEMPTS = Counter("llm_provider_attempts_total", "Provider attempts", ["provider", "model", "outcome"])


def _json_safe(value: Any) -> Any:
    """What jsonb takes: NaN and infinity become null, NUL characters go, numpy scalars become Python
    numbers, sets become lists."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {str(key).replace("\x00", ""): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(item) for item in value]
    return value


@dataclass
class TraceRecorder:
    tenant: Tenant
    request_id: str
    endpoint: str
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    started: float = field(default_factory=time.perf_counter)
    created_at: Any = field(default_factory=timezone.now)
    spans: list[dict[str, Any]] = field(default_factory=list)
    fields: dict[str, Any] = field(default_factory=dict)

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    @contextmanager
    def span(self, name: str, **attributes: Any) -> Iterator[dict[str, Any]]:
        """Times a step; the yielded dict collects attributes; an exception marks the span as an error."""
        start = self.elapsed_ms()
        record: dict[str, Any] = dict(attributes)
        status = "ok"
        try:
            yield record
        except Exception as exc:
            status = "error"
            record.setdefault("error", f"{type(exc).__name__}: {exc}"[:300])
            raise
        finally:
            self.spans.append(
                {
                    "name": name,
                    "status": record.pop("status", status),
                    "start_ms": start,
                    "duration_ms": self.elapsed_ms() - start,
                    "attributes": record,
                }
            )

    def add_span(
        self, name: str, *, start_ms: float, duration_ms: float, status: str = "ok", **attributes: Any
    ) -> None:
        self.spans.append(
            {
                "name": name,
                "status": status,
                "start_ms": start_ms,
                "duration_ms": duration_ms,
                "attributes": attributes,
            }
        )

    def set(self, **values: Any) -> None:
        self.fields.update(values)

    def finish(self, *, status: str = TraceStatus.OK, error: str = "") -> Trace:
        """Writes the trace and all its spans in one statement."""
        latency = self.elapsed_ms()
        trace = Trace(
            id=self.id,
            tenant=self.tenant,
            request_id=self.request_id,
            endpoint=self.endpoint,
            status=status,
            error=error.replace("\x00", "")[:500],
            latency_ms=latency,
            created_at=self.created_at,
            **self.fields,
        )
        spans = [{"ordinal": index, **span} for index, span in enumerate(self.spans)]
        # The request was served (and charged): losing its trace must not fail it. Inside a larger
        # transaction a savepoint keeps a failed write from aborting the rest.
        savepoint = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
        try:
            values = {
                str(field.column): field.get_db_prep_save(field.pre_save(trace, True), connection)
                for field in TRACE_FIELDS
            }
            values["spans"] = json.dumps(_json_safe(spans), cls=DjangoJSONEncoder)
            values["async_commit"] = async_commit_param()
            with savepoint, connection.cursor() as cursor:
                cursor.execute(INSERT_TRACE_SQL, values)
        except (DatabaseError, TypeError, ValueError):
            logger.exception("writing trace %s failed", self.id)
        labels = {"provider": trace.provider or "-", "model": trace.model or "-"}
        REQUESTS.labels(endpoint=self.endpoint, status=status, **labels).inc()
        LATENCY.labels(endpoint=self.endpoint).observe(latency / 1000)
        if trace.time_to_first_token_ms is not None:
            TTFT.labels(provider=labels["provider"]).observe(trace.time_to_first_token_ms / 1000)
        for kind in ("input_tokens", "cached_input_tokens", "output_tokens"):
            TOKENS.labels(kind=kind, **labels).inc(getattr(trace, kind))
        COST.labels(**labels).inc(trace.cost_nanos / 1e9)
        return trace
