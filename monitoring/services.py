"""Recording traces: spans are collected in memory during a request and written in one go at the end,
so tracing adds no database round trip per span on the hot path."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.utils import timezone
from prometheus_client import Counter, Histogram

from monitoring.models import Span, Trace, TraceStatus
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
ATTEMPTS = Counter("llm_provider_attempts_total", "Provider attempts", ["provider", "model", "outcome"])


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
        """Writes the trace and all its spans: two statements in one transaction."""
        latency = self.elapsed_ms()
        trace = Trace(
            id=self.id,
            tenant=self.tenant,
            request_id=self.request_id,
            endpoint=self.endpoint,
            status=status,
            error=error[:500],
            latency_ms=latency,
            created_at=self.created_at,
            **self.fields,
        )
        with transaction.atomic():
            trace.save(force_insert=True)
            Span.objects.bulk_create(
                [Span(trace=trace, ordinal=index, **span) for index, span in enumerate(self.spans)]
            )
        labels = {"provider": trace.provider or "-", "model": trace.model or "-"}
        REQUESTS.labels(endpoint=self.endpoint, status=status, **labels).inc()
        LATENCY.labels(endpoint=self.endpoint).observe(latency / 1000)
        if trace.time_to_first_token_ms is not None:
            TTFT.labels(provider=labels["provider"]).observe(trace.time_to_first_token_ms / 1000)
        for kind in ("input_tokens", "cached_input_tokens", "output_tokens"):
            TOKENS.labels(kind=kind, **labels).inc(getattr(trace, kind))
        COST.labels(**labels).inc(trace.cost_nanos / 1e9)
        return trace
