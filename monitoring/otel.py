"""OpenTelemetry export: with OTEL_EXPORTER_OTLP_ENDPOINT set, every written trace is also sent as
OpenTelemetry spans over OTLP/HTTP (Langfuse, Jaeger, Tempo, Honeycomb...), named and attributed by
the GenAI semantic conventions.

A trace becomes a root span for the request ("chat gpt-4o-mini"), with a child for each of our spans:
a provider attempt is a GenAI client span, the other steps (guard, retrieval, cache, settle...) are
internal spans with their attributes under `llm_backend.`. The spans are built by the background
thread that writes the traces, after the response, with the start and end times the request recorded,
and handed to the SDK's batch processor, whose own thread sends them: never on the request path.

Unset, nothing here imports the SDK. The provider is made on the first export in each process (so in
a gunicorn worker, after the fork) and flushed at exit, after the background queue has run dry.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import DatabaseError

from tenants.background import background
from tenants.models import Tenant

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue

logger = logging.getLogger(__name__)

TraceRow = tuple[dict[str, Any], list[dict[str, Any]]]
OPERATION = "chat"  # gen_ai.operation.name: both endpoints (ours and /v1) are chat completions
PREFIX = "llm_backend."  # our own attributes, beside the GenAI conventions' ones
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def span_processor() -> SpanProcessor:
    """Where finished spans go: batched, and sent to the OTLP/HTTP endpoint by the SDK's own thread.
    The exporter and the processor read the standard variables (endpoint, headers, timeout,
    compression, OTEL_BSP_* sizes) themselves. Tests point this at an in-memory exporter."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(OTLPSpanExporter())


class _Tracing:
    """The process's tracer provider: made on first use, again in a forked child (whose copy of the
    parent's has no export thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.provider: TracerProvider | None = None
        self._tracer: Tracer | None = None
        self._pid = 0

    def tracer(self) -> Tracer:
        with self._lock:
            if self._tracer is None or self._pid != os.getpid():
                self.provider = _provider_create()
                self._tracer = self.provider.get_tracer("llm_backend.monitoring")
                self._pid = os.getpid()
            return self._tracer

    def shutdown(self) -> None:
        """Sends what the processor holds (within the exporter's timeout) and stops it. At exit, the
        background queue is drained first: the traces still in it are exported too."""
        if self.provider is None or self._pid != os.getpid():
            return
        background.flush()
        with self._lock:
            provider, self.provider, self._tracer = self.provider, None, None
        if provider is not None:
            provider.shutdown()


tracing = _Tracing()
atexit.register(tracing.shutdown)


def _provider_create() -> TracerProvider:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "llm-backend"}))
    # Not the SDK's own atexit hook: registered after the background runner's, it would run before
    # the queue is drained, and lose the last traces.
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    provider.add_span_processor(span_processor())
    return provider


def traces_export(traces: list[TraceRow]) -> None:
    """Exports written (trace row, spans) pairs as OpenTelemetry traces, when an endpoint is set.
    A failure is logged, never raised: the requests were served and their traces stored."""
    if not settings.OTEL_EXPORTER_OTLP_ENDPOINT or not traces:
        return
    try:
        tracer = tracing.tracer()
    except Exception:
        logger.exception("no OpenTelemetry tracer: %s traces not exported", len(traces))
        return
    slugs = _tenant_slugs({row["tenant_id"] for row, _ in traces})
    for row, spans in traces:
        try:
            _trace_export(tracer, row, spans, slugs.get(row["tenant_id"], ""))
        except Exception:  # one odd trace loses only itself
            logger.exception("exporting trace %s to OpenTelemetry failed", row.get("id"))


def _tenant_slugs(ids: set[int]) -> dict[int, str]:
    """Tenant slugs, which name a tenant in a tracing backend better than its id; none when the
    database cannot say (the spans go out without them)."""
    try:
        return dict(Tenant.objects.filter(pk__in=ids).values_list("pk", "slug"))
    except DatabaseError:
        return {}


def _trace_export(tracer: Tracer, row: dict[str, Any], spans: list[dict[str, Any]], slug: str) -> None:
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace import SpanKind

    start = _epoch_ns(row["created_at"])
    attempts = [span for span in spans if span["name"] == "provider"]
    requested = attempts[0]["attributes"].get("model") if attempts else row["model"]
    finish_reason = next(
        (s["attributes"]["finish_reason"] for s in spans if "finish_reason" in s["attributes"]), None
    )
    root = tracer.start_span(
        f"{OPERATION} {requested}" if requested else OPERATION,
        kind=SpanKind.SERVER,
        attributes=_root_attributes(row, requested, finish_reason, slug),
        start_time=start,
    )
    _status_set(root, row["status"], row["error"])
    context = otel_trace.set_span_in_context(root)
    served = _served_attempt(row, attempts)
    for span in spans:
        child_start = start + _ms_ns(span["start_ms"])
        if span["name"] == "provider":
            name = f"{OPERATION} {span['attributes'].get('model', '')}".strip()
            attributes = _attempt_attributes(span, row if span is served else None, finish_reason)
            kind = SpanKind.CLIENT
        else:
            name, attributes, kind = span["name"], _flat(span["attributes"], PREFIX), SpanKind.INTERNAL
        child = tracer.start_span(
            name, context=context, kind=kind, attributes=attributes, start_time=child_start
        )
        _status_set(child, span["status"], str(span["attributes"].get("error", "")))
        child.end(end_time=child_start + _ms_ns(span["duration_ms"]))
    root.end(end_time=start + _ms_ns(row["latency_ms"]))


def _served_attempt(row: dict[str, Any], attempts: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The attempt whose answer was served and charged: the last successful one, when the request
    was answered by a provider (not from the cache)."""
    if row["cached"] or not attempts or attempts[-1]["status"] != "ok":
        return None
    return attempts[-1]


def _gen_ai(provider: str, model: str) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {"gen_ai.operation.name": OPERATION}
    if provider:
        # gen_ai.system is the conventions' older name of gen_ai.provider.name; backends read either.
        attributes["gen_ai.system"] = attributes["gen_ai.provider.name"] = provider
    if model:
        attributes["gen_ai.request.model"] = model
    return attributes


def _usage(row: dict[str, Any], finish_reason: str | None) -> dict[str, AttributeValue]:
    """What the request consumed, as charged. The conventions' input tokens include the cached ones
    (our trace keeps them apart: input_tokens are the uncached ones)."""
    attributes: dict[str, AttributeValue] = {
        "gen_ai.response.model": row["model"],
        "gen_ai.usage.input_tokens": row["input_tokens"] + row["cached_input_tokens"],
        "gen_ai.usage.cache_read.input_tokens": row["cached_input_tokens"],
        "gen_ai.usage.output_tokens": row["output_tokens"],
    }
    if finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [finish_reason]
    return attributes


def _root_attributes(
    row: dict[str, Any], requested: str | None, finish_reason: str | None, slug: str
) -> dict[str, AttributeValue]:
    attributes = _gen_ai(row["provider"], requested or "")
    if row["model"]:
        attributes.update(_usage(row, finish_reason))
    ours = {
        "trace_id": str(row["id"]),
        "request_id": row["request_id"],
        "endpoint": row["endpoint"],
        "status": row["status"],
        "tenant.id": row["tenant_id"],
        "tenant.slug": slug,
        "prompt.name": row["prompt_name"],
        "prompt.version": row["prompt_version"],
        "prompt.variant": row["prompt_variant"],
        "cost_usd": row["cost_nanos"] / 1e9,  # telemetry: the exact amount is in the ledger
        "cached": row["cached"],
        "streamed": row["streamed"],
        "attempts": row["attempts"],
        "time_to_first_token_ms": row["time_to_first_token_ms"],
    }
    if row["status"] == "error" and row["error"]:
        attributes["error.type"] = row["error"].split(":", 1)[0]  # the exception's class name
    attributes.update(_flat(ours, PREFIX))
    return attributes


def _attempt_attributes(
    span: dict[str, Any], served: dict[str, Any] | None, finish_reason: str | None
) -> dict[str, AttributeValue]:
    """A provider attempt as a GenAI client span; the served one carries the usage."""
    values = dict(span["attributes"])
    attributes = _gen_ai(str(values.pop("provider", "")), str(values.pop("model", "")))
    if served is not None:
        attributes.update(_usage(served, finish_reason))
    if span["status"] == "error":
        attributes["error.type"] = str(values.get("error_kind") or "error")
    if values.get("http_status"):
        attributes["http.response.status_code"] = int(values.pop("http_status"))
    attributes.update(_flat(values, PREFIX))
    return attributes


def _status_set(span: Span, status: str, error: str) -> None:
    """Our "error" is OpenTelemetry's; a refusal (guard, budget) or a skipped step is no failure of
    ours, and keeps the unset status, with its reason in the attributes."""
    from opentelemetry.trace import Status, StatusCode

    if status == "error":
        span.set_status(Status(StatusCode.ERROR, error or None))
    elif status != "ok":
        span.set_attribute(f"{PREFIX}status", status)
        if error:
            span.set_attribute(f"{PREFIX}error", error)


def _flat(values: dict[str, Any], prefix: str) -> dict[str, AttributeValue]:
    """Attributes OpenTelemetry takes: scalars as they are, nested dicts as dotted names, lists of
    one scalar type as they are; anything else as JSON text. None is left out."""
    flat: dict[str, AttributeValue] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if value is None:
            continue
        if isinstance(value, dict):
            flat.update(_flat(value, f"{name}."))
        elif isinstance(value, str | bool | int | float):
            flat[name] = value
        elif isinstance(value, list | tuple) and len({type(item) for item in value}) == 1:
            if isinstance(value[0], str | bool | int | float):
                flat[name] = list(value)
            else:
                flat[name] = json.dumps(value, default=str)
        else:
            flat[name] = json.dumps(value, default=str)
    return flat


def _epoch_ns(created_at: str | datetime) -> int:
    """Nanoseconds since the epoch, exactly (a float of them would lose the microseconds)."""
    moment = datetime.fromisoformat(created_at) if isinstance(created_at, str) else created_at
    return (moment - EPOCH) // timedelta(microseconds=1) * 1000


def _ms_ns(milliseconds: float) -> int:
    return round(milliseconds * 1_000_000)
