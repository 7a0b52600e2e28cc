"""OpenTelemetry export (monitoring/otel.py): a chat request's trace becomes one OTel trace, a root span
for the request and a child for each of our spans, named and attributed by the GenAI conventions;
seen through the SDK's in-memory exporter and through a real OTLP/HTTP receiver on 127.0.0.1. Unset,
nothing is exported and no provider is made."""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from billing.models import UsageEntry
from monitoring import otel
from monitoring.models import Span, Trace
from monitoring.otel import _epoch_ns
from monitoring.services import TraceRecorder, trace_queue
from prompts.services import experiment_start
from tenants.models import Scope
from tests.chat import conftest as chat
from tests.chat.test_chain import ask

# The chat tests' fake providers, clients and per-test state (autouse), for this module's requests.
_chat_state = chat._chat_state
openai_server, anthropic_server, upstreams = chat.openai_server, chat.anthropic_server, chat.upstreams
chat_client, support_prompt = chat.chat_client, chat.support_prompt


@pytest.fixture
def fresh_tracing() -> Iterator[None]:
    """Each test makes its own provider and leaves none behind."""
    otel.tracing.shutdown()
    yield
    otel.tracing.shutdown()


@pytest.fixture
def exported(settings, monkeypatch, fresh_tracing) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    settings.OTEL_EXPORTER_OTLP_ENDPOINT = "http://127.0.0.1:9"  # on; the spans stay in memory
    monkeypatch.setattr(otel, "span_processor", lambda: SimpleSpanProcessor(exporter))
    return exporter


def split(spans: tuple[ReadableSpan, ...]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    [root] = [span for span in spans if span.parent is None]
    children = sorted((span for span in spans if span.parent is not None), key=lambda s: s.start_time or 0)
    return root, children


def test_a_chat_request_is_exported_as_a_genai_trace(
    tenant, chat_client, upstreams, support_prompt, exported
):
    experiment = experiment_start(template=support_prompt, variants=[(1, 0), (2, 100)], actor="t")
    body = ask(chat_client, prompt="support", variables={"company": "Acme"}, user="u1").json()
    trace = Trace.objects.get(pk=body["trace_id"])
    entry = UsageEntry.objects.get()
    root, children = split(exported.get_finished_spans())

    assert root.name == "chat gpt-4o-mini"
    assert root.kind == SpanKind.SERVER
    assert root.status.status_code == StatusCode.UNSET
    stored = list(Span.objects.filter(trace=trace).order_by("start_ms", "ordinal"))
    assert [child.name for child in children] == [
        "chat gpt-4o-mini" if span.name == "provider" else span.name for span in stored
    ]
    for child in children:
        assert child.context.trace_id == root.context.trace_id
        assert child.parent.span_id == root.context.span_id
        assert root.start_time <= child.start_time <= child.end_time <= root.end_time
    assert root.start_time == _epoch_ns(trace.created_at)
    assert root.end_time - root.start_time == round(trace.latency_ms * 1e6)

    assert dict(root.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.system": "openai",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": entry.input_tokens + entry.cached_input_tokens,
        "gen_ai.usage.cache_read.input_tokens": entry.cached_input_tokens,
        "gen_ai.usage.output_tokens": entry.output_tokens,
        "gen_ai.response.finish_reasons": ("stop",),
        "llm_backend.trace_id": str(trace.pk),
        "llm_backend.request_id": trace.request_id,
        "llm_backend.endpoint": "chat",
        "llm_backend.status": "ok",
        "llm_backend.tenant.id": tenant.pk,
        "llm_backend.tenant.slug": "acme",
        "llm_backend.prompt.name": "support",
        "llm_backend.prompt.version": 2,
        "llm_backend.prompt.variant": experiment.variants.get(version__number=2).pk,
        "llm_backend.cost_usd": entry.cost_nanos / 1e9,
        "llm_backend.cached": False,
        "llm_backend.streamed": False,
        "llm_backend.attempts": 1,
    }
    assert (entry.input_tokens, entry.cached_input_tokens, entry.output_tokens) == (25, 5, 8)
    assert (trace.input_tokens, trace.cached_input_tokens, trace.output_tokens) == (25, 5, 8)

    [attempt] = [child for child in children if child.kind == SpanKind.CLIENT]
    assert {key: value for key, value in attempt.attributes.items() if key.startswith("gen_ai.")} == {
        key: value for key, value in root.attributes.items() if key.startswith("gen_ai.")
    }
    assert attempt.attributes["llm_backend.attempt"] == 1
    settle = next(child for child in children if child.name == "settle")
    assert settle.kind == SpanKind.INTERNAL
    assert settle.attributes["llm_backend.cost_nanos"] == entry.cost_nanos


def test_failed_attempts_are_error_spans_and_the_served_one_carries_the_usage(
    tenant, chat_client, upstreams, exported
):
    openai_server, _ = upstreams
    openai_server.then("500", "500")  # both attempts (CHAT_MAX_RETRIES = 1): on to Anthropic
    body = ask(chat_client).json()
    root, children = split(exported.get_finished_spans())
    attempts = [child for child in children if child.kind == SpanKind.CLIENT]

    assert [a.name for a in attempts] == ["chat gpt-4o-mini", "chat gpt-4o-mini", "chat claude-haiku-4-5"]
    for failed in attempts[:2]:
        assert failed.status.status_code == StatusCode.ERROR
        assert failed.attributes["gen_ai.system"] == "openai"
        assert (
            failed.attributes["error.type"]
            == Span.objects.filter(name="provider")[0].attributes["error_kind"]
        )
        assert failed.attributes["http.response.status_code"] == 500
        assert "gen_ai.usage.input_tokens" not in failed.attributes
    served = attempts[2]
    assert served.status.status_code == StatusCode.UNSET
    assert served.attributes["gen_ai.system"] == "anthropic"
    assert served.attributes["gen_ai.response.model"] == "claude-haiku-4-5"
    assert served.attributes["gen_ai.usage.output_tokens"] == UsageEntry.objects.get().output_tokens
    assert attempts[0].end_time <= attempts[1].start_time <= attempts[1].end_time <= served.start_time
    # The root names what was asked for and what answered.
    assert root.name == "chat gpt-4o-mini"
    assert root.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert root.attributes["gen_ai.response.model"] == "claude-haiku-4-5"
    assert root.attributes["llm_backend.attempts"] == 3
    assert root.attributes["llm_backend.trace_id"] == body["trace_id"]


def test_a_failed_request_is_an_error_root(tenant, chat_client, openai_server, settings, exported):
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = ["openai:gpt-4o-mini"]
    openai_server.then("500", "500")
    assert ask(chat_client).status_code == 502
    root, children = split(exported.get_finished_spans())
    trace = Trace.objects.get()
    assert root.status.status_code == StatusCode.ERROR
    assert root.status.description == trace.error
    assert root.attributes["error.type"] == "UpstreamUnavailable"
    assert "gen_ai.usage.input_tokens" not in root.attributes
    assert all(
        child.status.status_code == StatusCode.ERROR for child in children if child.kind == SpanKind.CLIENT
    )


def test_a_stream_and_a_cache_hit(tenant, chat_client, upstreams, exported):
    b"".join(ask(chat_client, stream=True, temperature=0).streaming_content)
    assert ask(chat_client, temperature=0).json()["cached"]
    streamed, hit = (Trace.objects.get(streamed=streamed) for streamed in (True, False))
    roots = {
        root.attributes["llm_backend.trace_id"]: root
        for root in exported.get_finished_spans()
        if root.parent is None
    }
    children = [span for span in exported.get_finished_spans() if span.parent is not None]

    root = roots[str(streamed.pk)]
    assert root.attributes["llm_backend.streamed"] is True
    assert root.attributes["llm_backend.time_to_first_token_ms"] == streamed.time_to_first_token_ms
    assert root.attributes["gen_ai.usage.output_tokens"] == streamed.output_tokens
    [stream] = [
        span for span in children if span.name == "stream" and span.parent.span_id == root.context.span_id
    ]
    [attempt] = [span for span in children if span.kind == SpanKind.CLIENT]
    assert attempt.parent.span_id == root.context.span_id
    assert attempt.start_time <= stream.start_time <= stream.end_time <= root.end_time
    assert stream.attributes["llm_backend.usage_source"] == "provider"

    root = roots[str(hit.pk)]
    assert root.name == "chat gpt-4o-mini"
    assert root.attributes["llm_backend.cached"] is True
    assert root.attributes["llm_backend.cost_usd"] == 0
    assert root.attributes["gen_ai.system"] == "openai"
    assert not [
        span
        for span in children
        if span.parent.span_id == root.context.span_id and span.kind == SpanKind.CLIENT
    ]


def test_attributes_are_flattened_and_an_odd_trace_loses_only_itself(tenant, exported, monkeypatch, caplog):
    captured: list[tuple[dict, list[dict]]] = []
    monkeypatch.setattr(trace_queue, "put", lambda row, spans: captured.append((row, spans)))
    for request_id in ("first", "odd", "last"):
        recorder = TraceRecorder(tenant=tenant, request_id=request_id, endpoint="test")
        with recorder.span("guard_output", redacted={"email": 2}, scores=[0.5, 0.25], ids=[1, "a"]):
            pass
        recorder.finish()
    captured[1][0]["created_at"] = "not a time"
    with caplog.at_level(logging.ERROR, logger="monitoring.otel"):
        otel.traces_export(captured)
    assert f"exporting trace {captured[1][0]['id']} to OpenTelemetry failed" in caplog.text
    spans = exported.get_finished_spans()
    roots = [span for span in spans if span.parent is None]
    assert [root.attributes["llm_backend.request_id"] for root in roots] == ["first", "last"]
    assert roots[0].name == "chat"  # no model: refused or failed before one was chosen
    [guard, _] = [span for span in spans if span.name == "guard_output"]
    assert dict(guard.attributes) == {
        "llm_backend.redacted.email": 2,
        "llm_backend.scores": (0.5, 0.25),
        "llm_backend.ids": '[1, "a"]',  # mixed types: OpenTelemetry takes a list of one type only
    }


class OtlpReceiver:
    """An OTLP/HTTP collector on 127.0.0.1: keeps each POST /v1/traces, decoded, and its headers."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], ExportTraceServiceRequest]] = []
        self.received = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                receiver.requests.append(
                    (
                        {k.lower(): v for k, v in self.headers.items()},
                        ExportTraceServiceRequest.FromString(body),
                    )
                )
                payload = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                receiver.received.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def receiver(settings, monkeypatch, fresh_tracing) -> Iterator[OtlpReceiver]:
    server = OtlpReceiver()
    # The SDK reads the standard variables itself; settings only say that export is on.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", server.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-honeycomb-team=secret-key")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "llm-backend-test")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")  # nothing sent until the flush
    settings.OTEL_EXPORTER_OTLP_ENDPOINT = server.url
    yield server
    server.close()


def value(attribute: Any) -> Any:
    kind = attribute.value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(item) for item in attribute.value.array_value.values]
    return getattr(attribute.value, kind)


def value_of(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


def test_spans_reach_an_otlp_http_receiver(tenant, chat_client, upstreams, receiver):
    body = ask(chat_client).json()
    assert not receiver.requests  # batched: sent by the processor's thread, not by the request
    otel.tracing.shutdown()  # what a worker's exit does: flush, then stop
    assert receiver.received.wait(10)

    headers, request = receiver.requests[0]
    assert headers["x-honeycomb-team"] == "secret-key"
    assert headers["content-type"] == "application/x-protobuf"
    [resource_spans] = request.resource_spans
    resource = {a.key: value(a) for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "llm-backend-test"
    spans = [span for scope in resource_spans.scope_spans for span in scope.spans]
    [root] = [span for span in spans if not span.parent_span_id]
    attributes = {a.key: value(a) for a in root.attributes}
    trace = Trace.objects.get(pk=body["trace_id"])
    assert root.name == "chat gpt-4o-mini"
    assert root.start_time_unix_nano == _epoch_ns(trace.created_at)
    assert attributes["llm_backend.trace_id"] == body["trace_id"]
    assert attributes["gen_ai.system"] == "openai"
    assert attributes["gen_ai.usage.output_tokens"] == trace.output_tokens
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes["llm_backend.tenant.slug"] == "acme"
    assert len(spans) == 1 + Span.objects.filter(trace=trace).count()
    assert {span.parent_span_id for span in spans if span.parent_span_id} == {root.span_id}
    assert {span.trace_id for span in spans} == {root.trace_id}


@pytest.fixture
def local_chain(monkeypatch) -> None:
    """For the gunicorn workers, whose environment is this process's: the offline local model."""
    monkeypatch.setenv("CHAT_DEFAULT_FALLBACK_CHAIN", "local:local")


def test_gunicorn_workers_send_their_spans_when_they_stop(
    receiver, local_chain, gunicorn_server, tenant, make_key
):
    """Real workers, forked before any provider exists, their background threads and batch
    processors: nothing is sent while they serve (the processor waits for its batch), and every
    request's spans when they stop, after their last traces are written."""
    _, raw_key = make_key(tenant, scopes=[Scope.CHAT])
    trace_ids = set()
    for n in range(6):
        request = urllib.request.Request(
            f"{gunicorn_server.url}/api/v1/chat",
            data=json.dumps({"message": f"question {n}"}).encode(),
            headers={"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json"},
        )
        # A liveness bound: on a busy machine the workers take a while to load the app.
        with urllib.request.urlopen(request, timeout=120) as response:
            trace_ids.add(json.load(response)["trace_id"])
    assert not receiver.requests
    gunicorn_server.process.terminate()
    gunicorn_server.process.wait(60)

    roots = [
        span
        for _, request in receiver.requests
        for resource_spans in request.resource_spans
        for scope in resource_spans.scope_spans
        for span in scope.spans
        if not span.parent_span_id
    ]
    exported = {value(a) for root in roots for a in root.attributes if a.key == "llm_backend.trace_id"}
    assert exported == trace_ids
    assert {root.name for root in roots} == {"chat local"}
    assert Trace.objects.filter(pk__in=trace_ids).count() == 6


def test_nothing_is_exported_when_no_endpoint_is_set(
    tenant, chat_client, upstreams, settings, monkeypatch, fresh_tracing
):
    settings.OTEL_EXPORTER_OTLP_ENDPOINT = ""
    made: list[object] = []
    monkeypatch.setattr(otel, "span_processor", lambda: made.append(1))
    assert ask(chat_client).status_code == 200
    assert Trace.objects.count() == 1  # the trace was written
    assert made == []
    assert otel.tracing.provider is None
