"""Recording traces: spans are collected in memory during a request; at its end the trace is handed to
the background thread (tenants/background.py), which writes every trace queued meanwhile and their
spans in one statement. Tracing costs a request no database round trip at all.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import DatabaseError, DataError, IntegrityError, connection, models, transaction
from django.utils import timezone

from config.logs import log_context_update

# The metrics live in monitoring/metrics.py; the names other modules imported from here still resolve.
from monitoring.metrics import ATTEMPTS as ATTEMPTS
from monitoring.metrics import COST as COST
from monitoring.metrics import FEEDBACK, TRACES_DROPPED, TRACES_LOST, request_observe
from monitoring.metrics import LATENCY as LATENCY
from monitoring.metrics import REQUESTS as REQUESTS
from monitoring.metrics import TOKENS as TOKENS
from monitoring.metrics import TTFT as TTFT
from monitoring.models import Feedback, FeedbackKind, FeedbackMetric, Span, Trace, TraceStatus
from monitoring.otel import traces_export
from monitoring.selectors import trace_by_reference
from tenants.background import background
from tenants.database import ASYNC_COMMIT_CTE, async_commit_param, prepared_cursor
from tenants.errors import DomainError, NotFoundError
from tenants.models import Tenant

logger = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
        # The request's log lines from here on name their trace.
        log_context_update(trace_id=str(self.id))

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

    def finish(self, *, status: str = TraceStatus.OK, error: str = "") -> None:
        """Counts the request in the metrics and queues the trace and its spans for writing."""
        latency = self.elapsed_ms()
        row = {
            **TRACE_DEFAULTS,
            **self.fields,
            "id": self.id,
            "tenant_id": self.tenant.pk,
            "request_id": self.request_id,
            "endpoint": self.endpoint,
            "status": status,
            "error": error[:500],
            "latency_ms": latency,
            "created_at": self.created_at.isoformat(),  # to the microsecond (DjangoJSONEncoder keeps ms)
        }
        request_observe(tenant=self.tenant, endpoint=self.endpoint, row=row)
        trace_queue.put(row, self.spans)


# Trace columns and their defaults, from the model: `fields` set by the pipeline fill in the rest.
TRACE_FIELDS = Trace._meta.concrete_fields
TRACE_DEFAULTS = {
    str(f.attname): f.get_default() for f in TRACE_FIELDS if f.attname not in ("id", "tenant_id")
}


@functools.cache
def insert_traces_sql() -> str:
    """Traces and their spans, each sent as one JSON array, in one statement committed without waiting
    for the disk (tenants/database.py): telemetry may be lost in an OS crash, the ledger may not.
    Columns and types come from the models, never from a request; strings arrive as text, so a value
    too long for its column fails the insert instead of being cut."""
    columns = [str(f.column) for f in TRACE_FIELDS]
    types = ["text" if isinstance(f, models.CharField) else str(f.db_type(connection)) for f in TRACE_FIELDS]
    record = ", ".join(f"{column} {kind}" for column, kind in zip(columns, types, strict=True))
    return f"""
WITH {ASYNC_COMMIT_CTE},
traces AS (
    INSERT INTO {Trace._meta.db_table} ({", ".join(columns)})
    SELECT {", ".join(columns)} FROM async_commit, jsonb_to_recordset(%(traces)s::jsonb) AS trace({record})
)
INSERT INTO {Span._meta.db_table} (trace_id, ordinal, name, status, start_ms, duration_ms, attributes)
SELECT trace_id, ordinal, name, status, start_ms, duration_ms, attributes
FROM jsonb_to_recordset(%(spans)s::jsonb) AS span(
    trace_id uuid, ordinal int, name text, status text, start_ms float8, duration_ms float8, attributes jsonb)
"""  # noqa: S608  # nosec B608  # names and types come from the models; values are bound parameters


def traces_write(traces: list[tuple[dict[str, Any], list[dict[str, Any]]]], *, retry: bool = True) -> None:
    """Writes (trace row, spans) pairs in one statement; a failure is logged and counted, never raised
    (the requests were served). When a value is at fault each trace is tried alone, so a bad one loses
    only itself; when the connection is (a failover, a killed backend), the batch is tried once more on
    a new one. Inside a larger transaction a savepoint keeps a failed write from aborting the rest."""
    try:
        _insert_traces(traces)
    except (DataError, IntegrityError, TypeError, ValueError):
        if len(traces) > 1:
            for trace in traces:
                traces_write([trace], retry=retry)
        else:
            TRACES_LOST.inc()
            logger.exception("writing trace %s failed", traces[0][0]["id"])
    except DatabaseError:
        if retry and not connection.in_atomic_block:
            connection.close()
            traces_write(traces, retry=False)
        else:
            TRACES_LOST.inc(len(traces))
            logger.exception("writing %s traces failed", len(traces))


def _insert_traces(traces: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
    rows = [row for row, _ in traces]
    spans = [
        {"trace_id": row["id"], "ordinal": index, **span}
        for row, row_spans in traces
        for index, span in enumerate(row_spans)
    ]
    values = {
        "traces": json.dumps(_json_safe(rows), cls=DjangoJSONEncoder),
        "spans": json.dumps(_json_safe(spans), cls=DjangoJSONEncoder),
        "async_commit": async_commit_param(),
    }
    savepoint = transaction.atomic() if connection.in_atomic_block else contextlib.nullcontext()
    with savepoint, prepared_cursor() as cursor:
        cursor.execute(insert_traces_sql(), values)


class TraceQueue:
    """Finished traces waiting for the background thread. One job writes everything queued until
    the queue is empty, so under load traces go to the database in batches of up to MAX_BATCH."""

    MAX_BATCH = 200

    def __init__(self) -> None:
        self.forget()
        os.register_at_fork(after_in_child=self.forget)  # the parent's job does not run in a child

    def forget(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        self._scheduled = False  # a write_pending job is queued or running

    def put(self, row: dict[str, Any], spans: list[dict[str, Any]]) -> None:
        with self._lock:
            if len(self._pending) >= settings.BACKGROUND_QUEUE_SIZE:  # the database is down or far behind
                TRACES_DROPPED.inc()
                return
            self._pending.append((row, spans))
            if self._scheduled:
                return
            self._scheduled = True
        if not background.submit(self.write_pending):
            with self._lock:
                self._scheduled = False  # the next trace tries again

    def write_pending(self) -> None:
        while True:
            with self._lock:
                batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH :]
                if not batch:
                    self._scheduled = False
                    return
            try:
                traces_write(batch)
            except Exception:  # never leave the queue unscheduled behind an unexpected error
                logger.exception("writing %s traces failed", len(batch))
            traces_export(batch)  # OpenTelemetry, when configured (monitoring/otel.py)


trace_queue = TraceQueue()


# --- what a trace says about the request: refusal reason, question and answer --------------------------


# Error codes of refusals -> the reason a trace is filtered by, and llm_refusals_total{reason} counts.
def trace_text_fields(
    *, tenant: Tenant, request_text: str | None = None, answer_text: str | None = None
) -> dict[str, Any]:
    """The trace fields (for TraceRecorder.set) that record the question and/or the answer: their
    size and SHA-256 always, the text itself only when the tenant keeps it (Tenant.store_trace_text)."""
    values: dict[str, Any] = {}
    for prefix, text in (("request", request_text), ("answer", answer_text)):
        if text is None:
            continue
        data = text.encode("utf-8", "surrogatepass")
        values[f"{prefix}_bytes"] = len(data)
        values[f"{prefix}_sha256"] = hashlib.sha256(data).hexdigest()
        values[f"{prefix}_text"] = text if tenant.store_trace_text else ""
    return values


# --- feedback -------------------------------------------------------------------------------------------

# One row per (trace, name, end user) in one statement: concurrent repeats update it, never duplicate
# it nor fail on the unique constraint (a get-then-create would do both). xmax = 0 on a fresh insert.
FEEDBACK_UPSERT_SQL = f"""
INSERT INTO {Feedback._meta.db_table} AS feedback
    (tenant_id, trace_id, name, score, comment, end_user, prompt_name, prompt_version, prompt_variant,
     created_at, updated_at)
VALUES (%(tenant)s, %(trace)s, %(name)s, %(score)s, %(comment)s, %(end_user)s, %(prompt_name)s,
        %(prompt_version)s, %(prompt_variant)s, %(now)s, %(now)s)
ON CONFLICT ON CONSTRAINT feedback_one_per_user DO UPDATE SET
    score = EXCLUDED.score,
    comment = CASE WHEN %(keep_comment)s THEN feedback.comment ELSE EXCLUDED.comment END,
    updated_at = EXCLUDED.updated_at
RETURNING id, xmax = 0
"""  # noqa: S608  # nosec B608  # table names come from the models; values are bound parameters


def feedback_score_check(*, tenant: Tenant, name: str, score: float) -> None:
    """A declared scale's score lies within its bounds; any other name is thumbs: -1 or 1."""
    metric = FeedbackMetric.objects.filter(tenant=tenant, name=name).first()
    if metric is None or metric.kind == FeedbackKind.THUMBS:
        if score not in (-1, 1):
            raise DomainError(
                f'"{name}" is a thumbs metric: score must be -1 or 1, not {score:g}.',
                param="score",
                code="invalid_score",
            )
        return
    low, high = metric.scale_min, metric.scale_max
    assert low is not None  # the table's check constraint: a scale has both bounds
    assert high is not None
    if not low <= score <= high:
        raise DomainError(
            f'"{name}" is a scale from {low:g} to {high:g}: {score:g} is outside it.',
            param="score",
            code="invalid_score",
        )


def feedback_submit(
    *,
    tenant: Tenant,
    trace: str,
    score: float,
    name: str = "rating",
    comment: str | None = None,
    user: str | None = None,
) -> tuple[Feedback, bool]:
    """Records an end user's score of a trace (its id, request id or completion id), or changes the
    one they gave it before on this metric. Returns the feedback and whether it is new. `user`
    defaults to the trace's end user; a `comment` left out keeps the earlier one."""
    found = trace_by_reference(tenant=tenant, reference=trace)
    if found is None:
        raise _trace_not_found(trace)
    feedback_score_check(tenant=tenant, name=name, score=score)
    values: dict[str, Any] = {
        "tenant": tenant.pk,
        "trace": found.pk,
        "name": name,
        "score": score,
        "comment": comment or "",
        "keep_comment": comment is None,
        "end_user": found.end_user if user is None else user,
        "prompt_name": found.prompt_name,
        "prompt_version": found.prompt_version,
        "prompt_variant": found.prompt_variant,
        "now": timezone.now(),
    }
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(FEEDBACK_UPSERT_SQL, values)
            feedback_id, created = cursor.fetchone()
    except IntegrityError:  # the trace was deleted by retention since it was read
        raise _trace_not_found(trace) from None
    FEEDBACK.labels(name=name, score=f"{score:g}").inc()
    return Feedback.objects.get(pk=feedback_id), created


def _trace_not_found(reference: str) -> NotFoundError:
    return NotFoundError(
        f"No trace {reference!r}. A trace is written within a second or so after its answer: "
        "retry shortly if the answer has just been given.",
        param="trace_id",
        code="trace_not_found",
    )


# --- retention --------------------------------------------------------------------------------------------

# One batch of a tenant's old traces, their spans and their feedback in one statement; the CTE
# naming the batch is evaluated once, so the three deletes agree on it.
TRACE_PURGE_SQL = f"""
WITH doomed AS (
    SELECT id FROM {Trace._meta.db_table}
    WHERE tenant_id = %(tenant)s AND created_at < %(cutoff)s
    LIMIT %(batch)s
), spans AS (
    DELETE FROM {Span._meta.db_table} WHERE trace_id IN (SELECT id FROM doomed)
), feedback AS (
    DELETE FROM {Feedback._meta.db_table} WHERE trace_id IN (SELECT id FROM doomed)
)
DELETE FROM {Trace._meta.db_table} WHERE id IN (SELECT id FROM doomed)
"""  # noqa: S608  # nosec B608  # table names come from the models; values are bound parameters


def trace_retention_apply(
    *, tenant: Tenant, now: datetime | None = None, batch_size: int | None = None
) -> int:
    """Deletes the tenant's traces older than its retention, with their spans and feedback, in
    batches of `batch_size` traces, each its own short transaction, so neither the trace writer nor
    a reader waits on a long delete. Ledger entries keep their trace_id and are never touched.
    Returns how many traces went."""
    batch = batch_size or settings.TRACE_RETENTION_BATCH_SIZE
    cutoff = (now or timezone.now()) - timedelta(days=tenant.trace_retention_days)
    deleted = 0
    conflicts = 0
    while True:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(TRACE_PURGE_SQL, {"tenant": tenant.pk, "cutoff": cutoff, "batch": batch})
                count = cursor.rowcount
        except IntegrityError:
            # Feedback on one of these traces arrived during the statement; the next try sees it.
            conflicts += 1
            if conflicts > 3:
                raise
            continue
        deleted += count
        if count < batch:
            return deleted
