"""The fallback chain against fake upstreams through the real SDKs: retries, fallbacks, the
breaker, and the ledger after every fault (charged once or not at all, nothing left reserved)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from django.conf import settings as django_settings

from billing.models import BudgetPeriod, Reservation, UsageEntry
from chat.circuit import circuit_state
from monitoring.models import Span, Trace
from tests.conftest import BASE_DIR, start_of_fresh_token_window


def ask(chat_client, **body):
    return chat_client.post(
        "/api/v1/chat", {"message": "What is the capital of France?", **body}, format="json"
    )


def provider_spans(response) -> list[tuple[str, str, str]]:
    return attempts_of(response.json()["trace_id"])


def attempts_of(trace_id: str) -> list[tuple[str, str, str]]:
    """(provider, status, error kind) of each provider span of the trace."""
    trace = Trace.objects.get(pk=trace_id)
    return [
        (s.attributes.get("provider"), s.status, s.attributes.get("error_kind", ""))
        for s in Span.objects.filter(trace=trace, name="provider").order_by("ordinal")
    ]


def assert_settled_once(tenant, response) -> None:
    entries = UsageEntry.objects.filter(tenant=tenant, request_id=response.json()["id"])
    assert entries.count() == 1
    assert not Reservation.objects.exists()
    balance = BudgetPeriod.objects.get(tenant=tenant)
    assert balance.reserved_nanos == 0
    assert balance.spent_nanos == entries.get().cost_nanos


def test_happy_path_through_the_openai_sdk(tenant, chat_client, upstreams):
    openai_server, _ = upstreams
    response = ask(chat_client)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["answer"] == "Paris is the capital of France."
    assert (body["provider"], body["model"]) == ("openai", "gpt-4o-mini")
    assert body["usage"] == {
        "input_tokens": 25,
        "cached_input_tokens": 5,
        "output_tokens": 8,
        "cost_usd": "0.000008925",
    }  # 25*0.15 + 5*0.075 + 8*0.60 micro-USD
    assert openai_server.requests[0]["body"]["messages"][-1] == {
        "role": "user",
        "content": "What is the capital of France?",
    }
    assert openai_server.requests[0]["headers"]["authorization"] == "Bearer test-openai-key"
    assert_settled_once(tenant, response)


def test_500_is_retried_then_succeeds(tenant, chat_client, upstreams):
    openai_server, _ = upstreams
    openai_server.then("500")
    response = ask(chat_client)
    assert response.json()["provider"] == "openai"
    assert provider_spans(response) == [("openai", "error", "server"), ("openai", "ok", "")]
    assert len(openai_server.requests) == 2  # the SDK's own retries are off: every attempt is ours
    assert_settled_once(tenant, response)


def test_429_honours_retry_after_and_retries(tenant, chat_client, upstreams):
    openai_server, _ = upstreams
    openai_server.then("429")
    response = ask(chat_client)
    assert provider_spans(response) == [("openai", "error", "rate_limited"), ("openai", "ok", "")]
    assert_settled_once(tenant, response)


def test_timeouts_fall_back_to_anthropic(tenant, chat_client, upstreams):
    openai_server, anthropic_server = upstreams
    openai_server.then("hang", "hang")
    response = ask(chat_client)
    assert response.json()["provider"] == "anthropic"
    assert provider_spans(response) == [
        ("openai", "error", "timeout"),
        ("openai", "error", "timeout"),
        ("anthropic", "ok", ""),
    ]
    assert anthropic_server.requests[0]["body"]["messages"] == [
        {"role": "user", "content": "What is the capital of France?"}
    ]
    assert_settled_once(tenant, response)
    assert UsageEntry.objects.get(tenant=tenant).model == "claude-haiku-4-5"


def provider_errors(trace_id: str) -> list[str]:
    return [
        span.attributes.get("error", "")
        for span in Span.objects.filter(trace_id=trace_id, name="provider").order_by("ordinal")
    ]


def only(provider: str, upstreams, settings):
    """The chain `provider` then the local model, no retries; the provider's fake server."""
    model = "gpt-4o-mini" if provider == "openai" else "claude-haiku-4-5"
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = [f"{provider}:{model}", "local:local"]
    settings.CHAT_MAX_RETRIES = 0
    return upstreams[0] if provider == "openai" else upstreams[1]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_an_answer_trickling_past_the_request_timeout_falls_back(
    tenant, chat_client, upstreams, settings, provider
):
    """Each piece of the answer comes well within the per-read timeout (1 s); the whole answer does
    not come within CHAT_REQUEST_TIMEOUT_SECONDS (1 s), so the attempt times out."""
    server = only(provider, upstreams, settings)
    server.then("drip")  # 3 s in 15 pieces
    response = ask(chat_client)
    assert response.json()["provider"] == "local"
    assert provider_spans(response) == [(provider, "error", "timeout"), ("local", "ok", "")]
    assert_settled_once(tenant, response)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_stream_of_pings_without_a_first_token_falls_back(
    tenant, chat_client, upstreams, settings, provider
):
    server = only(provider, upstreams, settings)
    server.then("pings")  # 3 s of keep-alives, one every 0.2 s, before the first token
    events = parse_sse(b"".join(ask(chat_client, stream=True).streaming_content).decode())
    name, done = events[-1]
    assert (name, done["provider"]) == ("done", "local")
    assert attempts_of(done["trace_id"]) == [(provider, "error", "timeout"), ("local", "ok", "")]
    assert "no first token within 1 s" in provider_errors(done["trace_id"])[0]
    assert UsageEntry.objects.get(tenant=tenant).provider == "local"


def test_a_reasoning_stream_past_the_first_token_limit_is_not_cut(tenant, chat_client, upstreams, settings):
    """Thinking deltas are generated tokens: a model reasoning for longer than the first-token limit
    (1 s) before its answer is answering, not hanging."""
    server = only("openai", upstreams, settings)
    server.hang_seconds = 1.5  # of reasoning, a delta every 0.1 s
    server.then("reasoning")
    events = parse_sse(b"".join(ask(chat_client, stream=True).streaming_content).decode())
    name, done = events[-1]
    assert (name, done["provider"]) == ("done", "openai")
    assert (
        "".join(data["text"] for name, data in events if name == "delta") == "Paris is the capital of France."
    )


def test_text_the_sdk_cannot_encode_is_the_request_s_fault_not_the_provider_s():
    from chat.providers import classify

    error = classify(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"))
    assert error.kind == "bad_request"
    assert not error.counts_against_circuit


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_stream_running_past_its_limit_ends_with_an_error_and_is_charged_for_what_it_sent(
    tenant, chat_client, upstreams, settings, provider
):
    server = only(provider, upstreams, settings)
    settings.CHAT_STREAM_TIMEOUT_SECONDS = 1.0
    server.token_interval_seconds = 0.3  # six words: 1.5 s in all
    events = parse_sse(b"".join(ask(chat_client, stream=True).streaming_content).decode())
    deltas = "".join(data["text"] for name, data in events if name == "delta")
    name, final = events[-1]
    assert (name, final["error"]["code"]) == ("error", "stream_interrupted")
    assert "ran past its limit of 1 s" in final["error"]["message"]
    assert deltas
    assert "Paris is the capital of France.".startswith(deltas)
    assert deltas != "Paris is the capital of France."
    entry = UsageEntry.objects.get(tenant=tenant)
    assert entry.provider == provider
    assert entry.output_tokens == (len(deltas) + 3) // 4  # what was delivered, counted by us
    assert not Reservation.objects.exists()


def test_malformed_json_falls_back_without_retry_and_529_reaches_local(tenant, chat_client, upstreams):
    openai_server, anthropic_server = upstreams
    openai_server.then("malformed")
    anthropic_server.then("529", "529")
    response = ask(chat_client)
    body = response.json()
    assert (body["provider"], body["model"]) == ("local", "local")
    assert provider_spans(response) == [
        ("openai", "error", "malformed"),
        ("anthropic", "error", "server"),
        ("anthropic", "error", "server"),
        ("local", "ok", ""),
    ]
    assert_settled_once(tenant, response)


def test_a_request_the_provider_rejects_is_400_and_not_charged(tenant, chat_client, upstreams):
    openai_server, anthropic_server = upstreams
    openai_server.then("400")
    response = ask(chat_client)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "provider_rejected_request"
    assert not anthropic_server.requests
    assert not UsageEntry.objects.exists()
    assert BudgetPeriod.objects.get(tenant=tenant).reserved_nanos == 0


def test_when_every_provider_fails_nothing_is_charged(tenant, chat_client, upstreams, settings):
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"]
    openai_server, anthropic_server = upstreams
    openai_server.then("500", "500")
    anthropic_server.then("401")
    response = ask(chat_client)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert "anthropic:claude-haiku-4-5" in response.json()["error"]["message"]
    assert not UsageEntry.objects.exists()
    assert BudgetPeriod.objects.get(tenant=tenant).reserved_nanos == 0
    assert Trace.objects.get().status == "error"


def test_circuit_opens_skips_the_provider_then_half_opens(tenant, chat_client, upstreams, settings):
    settings.CIRCUIT_FAILURE_THRESHOLD = 2
    settings.CIRCUIT_COOLDOWN_SECONDS = 1
    openai_server, _ = upstreams
    openai_server.then("500", "500")
    first = ask(chat_client)  # two failures: the circuit opens, anthropic answers
    assert first.json()["provider"] == "anthropic"
    assert circuit_state("openai:gpt-4o-mini").state == "open"
    calls = len(openai_server.requests)
    second = ask(chat_client)
    assert second.json()["provider"] == "anthropic"
    assert len(openai_server.requests) == calls  # skipped, not called
    assert ("openai", "skipped", "") in provider_spans(second)
    time.sleep(1.1)
    third = ask(chat_client)  # half-open probe succeeds and closes the circuit
    assert third.json()["provider"] == "openai"
    assert circuit_state("openai:gpt-4o-mini").state == "closed"


def test_another_workers_failures_arrive_once_the_clean_reading_is_old(
    tenant, chat_client, upstreams, settings
):
    """A clean circuit reading is trusted for CIRCUIT_STATE_CHECK_SECONDS (no Redis round trip);
    a circuit another process opened meanwhile is seen as soon as the reading is older than that."""
    settings.CIRCUIT_STATE_CHECK_SECONDS = 60
    openai_server, _ = upstreams
    assert ask(chat_client).json()["provider"] == "openai"  # reads Redis: closed, no failures
    subprocess.run(  # another worker sees openai fail and opens its circuit
        [sys.executable, "-c", OPEN_CIRCUIT_ELSEWHERE],
        cwd=BASE_DIR,
        env={**os.environ, "REDIS_URL": django_settings.REDIS_URL, "CIRCUIT_FAILURE_THRESHOLD": "1"},
        check=True,
    )
    assert circuit_state("openai:gpt-4o-mini").state == "open"
    calls = len(openai_server.requests)
    assert ask(chat_client).json()["provider"] == "openai"  # the reading still stands: no round trip
    settings.CIRCUIT_STATE_CHECK_SECONDS = 0  # ...until it is older than the setting
    skipped = ask(chat_client)
    assert skipped.json()["provider"] == "anthropic"
    assert len(openai_server.requests) == calls + 1
    assert ("openai", "skipped", "") in provider_spans(skipped)


OPEN_CIRCUIT_ELSEWHERE = """
import django, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()
from chat.circuit import circuit_record_failure
circuit_record_failure("openai:gpt-4o-mini")
"""


def test_budget_exceeded_is_402_before_any_provider_call(tenant, chat_client, upstreams):
    from decimal import Decimal

    from billing.services import budget_update

    openai_server, _ = upstreams
    budget_update(tenant=tenant, actor="t", monthly_budget_usd=Decimal("0.00"))
    response = ask(chat_client)
    assert response.status_code == 402
    assert response.json()["error"]["type"] == "budget_exceeded"
    assert not openai_server.requests
    assert Trace.objects.get().status == "refused"


def test_a_402_gives_the_minute_s_tokens_back(tenant, chat_client, upstreams):
    from decimal import Decimal

    from billing.services import budget_update
    from tenants.ratelimits import tokens_this_minute

    budget_update(tenant=tenant, actor="t", monthly_budget_usd=Decimal("0.00"))
    assert ask(chat_client).status_code == 402
    assert tokens_this_minute(tenant=tenant).count == 0


def test_a_request_larger_than_a_whole_minute_of_tokens_is_400_not_an_endless_429(
    tenant, chat_client, upstreams
):
    from tenants.ratelimits import tokens_this_minute

    openai_server, _ = upstreams
    tenant.tokens_per_minute = 10  # less than any request's estimate (its max_tokens alone)
    tenant.save()
    response = ask(chat_client)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "request_over_tokens_per_minute"
    assert "Retry-After" not in response
    assert not openai_server.requests
    assert tokens_this_minute(tenant=tenant).count == 0
    assert not Reservation.objects.exists()


def test_over_the_tokens_per_minute_is_429_before_any_provider_call_and_reserves_nothing(
    tenant, chat_client, upstreams
):
    from tenants.ratelimits import token_rate_reserve, tokens_this_minute

    openai_server, _ = upstreams
    start_of_fresh_token_window(tenant)
    tenant.tokens_per_minute = 100_000
    tenant.save()
    token_rate_reserve(tenant=tenant, tokens=99_990)  # the minute is nearly spent
    response = ask(chat_client)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "tokens_per_minute_exceeded"
    assert int(response["Retry-After"]) >= 1
    assert not openai_server.requests
    assert tokens_this_minute(tenant=tenant).count == 99_990
    assert not Reservation.objects.exists()
    assert (
        not BudgetPeriod.objects.filter(tenant=tenant).exclude(reserved_nanos=0, tokens_reserved=0).exists()
    )


@pytest.mark.parametrize("behaviour", ["cut:3", "no_usage"])
def test_streams_are_charged_once_even_when_cut_or_without_usage(tenant, chat_client, upstreams, behaviour):
    openai_server, _ = upstreams
    openai_server.then(behaviour)
    response = ask(chat_client, stream=True)
    assert response["Content-Type"].startswith("text/event-stream")
    events = parse_sse(b"".join(response.streaming_content).decode())
    deltas = "".join(data["text"] for name, data in events if name == "delta")
    final_name, final = events[-1]
    entry = UsageEntry.objects.get(tenant=tenant)
    if behaviour == "cut:3":
        assert deltas == "Paris is the"
        assert final_name == "error"
        assert final["error"]["code"] == "stream_interrupted"
    else:
        assert deltas == "Paris is the capital of France."
        assert final_name == "done"
    assert entry.output_tokens == (len(deltas) + 3) // 4  # counted by us: no provider usage arrived
    assert not Reservation.objects.exists()
    assert BudgetPeriod.objects.get(tenant=tenant).spent_nanos == entry.cost_nanos


def test_a_retry_of_a_stream_that_broke_off_is_a_new_call_charged_as_one(tenant, chat_client, upstreams):
    """The broken stream was charged for what it delivered; the client's retry with the same
    Idempotency-Key calls the provider again, so it is charged too (not deduplicated as the same
    request by the ledger)."""
    openai_server, _ = upstreams
    openai_server.then("cut:3")
    headers = {"HTTP_IDEMPOTENCY_KEY": "stream-7"}
    body = {"message": "What is the capital of France?", "stream": True}
    broken = parse_sse(
        b"".join(chat_client.post("/api/v1/chat", body, format="json", **headers).streaming_content).decode()
    )
    assert broken[-1][0] == "error"
    retried = parse_sse(
        b"".join(chat_client.post("/api/v1/chat", body, format="json", **headers).streaming_content).decode()
    )
    assert retried[-1][0] == "done"
    entries = UsageEntry.objects.filter(tenant=tenant)
    assert len(openai_server.requests) == 2
    assert entries.count() == 2
    assert len({entry.request_id for entry in entries}) == 2
    assert float(retried[-1][1]["usage"]["cost_usd"]) > 0
    replayed = parse_sse(
        b"".join(chat_client.post("/api/v1/chat", body, format="json", **headers).streaming_content).decode()
    )
    assert replayed[-1][1]["answer"] == retried[-1][1]["answer"]  # the completed run is the key's answer
    assert len(openai_server.requests) == 2


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_stream_dropped_before_its_first_token_is_retried(
    tenant, chat_client, upstreams, settings, provider
):
    server = upstreams[0] if provider == "openai" else upstreams[1]
    model = "gpt-4o-mini" if provider == "openai" else "claude-haiku-4-5"
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = [f"{provider}:{model}", "local:local"]
    server.then("cut:0")
    response = ask(chat_client, stream=True)
    events = parse_sse(b"".join(response.streaming_content).decode())
    done = events[-1][1]
    assert (done["provider"], done["model"]) == (provider, model)
    assert attempts_of(done["trace_id"]) == [(provider, "error", "connection"), (provider, "ok", "")]
    assert UsageEntry.objects.get(tenant=tenant).output_tokens == 8


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_streams_reuse_the_connection_to_the_provider(tenant, chat_client, upstreams, settings, provider):
    """The openai SDK stops reading at [DONE] and would drop the connection: each stream would pay
    a new (TLS) handshake. Both providers' streams are read to the end, so one connection serves all."""
    server = upstreams[0] if provider == "openai" else upstreams[1]
    model = "gpt-4o-mini" if provider == "openai" else "claude-haiku-4-5"
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = [f"{provider}:{model}"]
    for _ in range(5):
        events = parse_sse(b"".join(ask(chat_client, stream=True).streaming_content).decode())
        assert events[-1][0] == "done"
    assert len(server.requests) == 5
    assert server.connections == 1


@pytest.mark.parametrize("transport", ["stdlib", "httpx"])
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_both_http_transports_carry_both_sdks(tenant, chat_client, upstreams, settings, provider, transport):
    settings.PROVIDER_HTTP_TRANSPORT = transport
    model = "gpt-4o-mini" if provider == "openai" else "claude-haiku-4-5"
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = [f"{provider}:{model}"]
    assert ask(chat_client).json()["provider"] == provider
    events = parse_sse(b"".join(ask(chat_client, stream=True).streaming_content).decode())
    assert (events[-1][0], events[-1][1]["provider"]) == ("done", provider)
    assert UsageEntry.objects.filter(tenant=tenant).count() == 2
    from chat.providers import provider_named
    from chat.transport import StdlibTransport

    sdk_transport = provider_named(provider).client._client._transport
    assert isinstance(sdk_transport, StdlibTransport) == (transport == "stdlib")


def test_a_connection_dropped_after_done_leaves_the_stream_complete(tenant, chat_client, upstreams):
    openai_server, _ = upstreams
    openai_server.then("reset_after_done")
    events = parse_sse(b"".join(ask(chat_client, stream=True).streaming_content).decode())
    final_name, final = events[-1]
    assert final_name == "done"
    assert final["usage"]["output_tokens"] == 8  # the provider's usage, which came before [DONE]
    assert UsageEntry.objects.get(tenant=tenant).output_tokens == 8
    assert Trace.objects.get(pk=final["trace_id"]).status == "ok"
    again = parse_sse(b"".join(ask(chat_client, stream=True).streaming_content).decode())
    assert again[-1][0] == "done"  # on a new connection
    assert openai_server.connections == 2


def test_stream_failure_before_the_first_token_falls_back(tenant, chat_client, upstreams):
    openai_server, _ = upstreams
    openai_server.then("500", "500")
    response = ask(chat_client, stream=True)
    events = parse_sse(b"".join(response.streaming_content).decode())
    assert (
        "".join(data["text"] for name, data in events if name == "delta") == "Paris is the capital of France."
    )
    done = events[-1][1]
    assert done["provider"] == "anthropic"
    assert done["usage"]["output_tokens"] == 8  # the provider's own usage
    assert UsageEntry.objects.get(tenant=tenant).output_tokens == 8


@pytest.mark.parametrize("first", ["openai", "anthropic"])
def test_an_overloaded_error_event_in_a_stream_is_retried_then_falls_back(
    tenant, chat_client, upstreams, settings, first
):
    """The stream opened with HTTP 200, then the provider reported itself overloaded in an event:
    a server failure (retried, then the next target), not a request the provider rejected."""
    servers = dict(zip(["openai", "anthropic"], upstreams, strict=True))
    chain = ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5"]
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = chain if first == "openai" else chain[::-1]
    servers[first].then("overloaded_event", "overloaded_event")
    events = parse_sse(b"".join(ask(chat_client, stream=True).streaming_content).decode())
    name, done = events[-1]
    second = "anthropic" if first == "openai" else "openai"
    assert (name, done["provider"]) == ("done", second)
    assert attempts_of(done["trace_id"]) == [(first, "error", "server")] * 2 + [(second, "ok", "")]
    assert UsageEntry.objects.get(tenant=tenant).provider == second


def parse_sse(text: str) -> list[tuple[str, dict]]:
    import json

    events = []
    for block in text.strip().split("\n\n"):
        name, data = "message", None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        if data and data != "[DONE]":
            events.append((name, json.loads(data)))
    return events


def test_a_client_leaving_mid_stream_is_charged_for_what_was_generated(tenant, upstreams):
    from chat.services import ChatParams, chat_stream

    openai_server, _ = upstreams
    openai_server.answer = " ".join(f"word{i}" for i in range(200))
    events = chat_stream(tenant=tenant, params=ChatParams(endpoint="chat", message="Count to 200"))
    assert isinstance(next(events), str)
    events.close()  # what the response's close() does when the client disconnects
    entry = UsageEntry.objects.get(tenant=tenant)
    assert entry.output_tokens > 0
    assert not Reservation.objects.exists()
    assert BudgetPeriod.objects.get(tenant=tenant).spent_nanos == entry.cost_nanos
    trace = Trace.objects.get()
    assert (trace.status, trace.error) == ("error", "ApiError: The client disconnected.")


def test_a_client_leaving_at_the_last_chunk_of_a_redacted_stream_is_charged(tenant, upstreams):
    """With output redaction the last word goes out after the provider's stream ended (it might have
    become an e-mail address); a client gone right then still settles the call."""
    from chat.services import ChatParams, chat_settings_update, chat_stream

    openai_server, _ = upstreams
    chat_settings_update(tenant=tenant, actor="t", redact_output=["email"])
    events = chat_stream(tenant=tenant, params=ChatParams(endpoint="chat", message="Capital of France?"))
    text = ""
    while text != openai_server.answer:
        text += next(events)  # the last piece is the held-back word, sent after the provider finished
    events.close()
    assert not Reservation.objects.exists()
    assert UsageEntry.objects.get(tenant=tenant).output_tokens == 8  # the provider's own count
    assert Trace.objects.get().error == "ApiError: The client disconnected."


STREAMING_REQUESTS = {
    "/api/v1/chat": {"message": "What is the capital of France?", "stream": True},
    "/v1/chat/completions": {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "stream": True,
    },
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("chunks_read", [0, 1])
@pytest.mark.parametrize("path", list(STREAMING_REQUESTS))
def test_a_streamed_response_closed_early_settles_and_releases_its_reservation(
    tenant, chat_client, upstreams, path, chunks_read
):
    """What gunicorn does when the client is gone: it closes the response, here after its first
    chunk (the OpenAI endpoint's is the role chunk, sent before any token is read) or before any."""
    response = chat_client.post(path, STREAMING_REQUESTS[path], format="json")
    assert response.status_code == 200
    chunks = iter(response.streaming_content)
    for _ in range(chunks_read):
        next(chunks)
    response.close()  # ends the request: Django closes the connection (hence transaction=True)
    assert not Reservation.objects.exists()
    entry = UsageEntry.objects.get(tenant=tenant)
    assert entry.output_tokens > 0  # the first delta had arrived from the provider, read or not
    assert BudgetPeriod.objects.get(tenant=tenant).spent_nanos == entry.cost_nanos > 0
    assert BudgetPeriod.objects.get(tenant=tenant).reserved_nanos == 0
    trace = Trace.objects.get()
    assert (trace.status, trace.error) == ("error", "ApiError: The client disconnected.")


def test_a_malformed_default_fallback_chain_is_refused_at_start_up(settings):
    from django.core import checks

    def check_ids() -> set[str]:
        return {message.id for message in checks.run_checks() if message.id}

    assert "chat.E004" not in check_ids()
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = ["openai:gpt-4o-mini", "opneai:gpt-4o"]
    assert "chat.E004" in check_ids()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("chunks_read", [0, 1])
@pytest.mark.parametrize("path", list(STREAMING_REQUESTS))
def test_a_retry_after_the_client_left_a_keyed_stream_is_a_new_charged_call(
    tenant, chat_client, upstreams, path, chunks_read
):
    """The stream the client left was charged for what it delivered; a retry with the same
    Idempotency-Key is a new provider call, charged under a new request id. Before, it reused the
    charged run's id once the claim expired, and the ledger charged a whole new answer nothing."""
    openai_server, _ = upstreams
    headers = {"HTTP_IDEMPOTENCY_KEY": f"left-{chunks_read}"}
    response = chat_client.post(path, STREAMING_REQUESTS[path], format="json", **headers)
    chunks = iter(response.streaming_content)
    for _ in range(chunks_read):
        next(chunks)
    response.close()  # the client is gone
    assert UsageEntry.objects.filter(tenant=tenant).count() == 1
    again = chat_client.post(path, STREAMING_REQUESTS[path], format="json", **headers)
    assert again.status_code == 200, getattr(again, "content", b"")[:300]
    b"".join(again.streaming_content)
    entries = UsageEntry.objects.filter(tenant=tenant)
    assert len(openai_server.requests) == 2
    assert entries.count() == 2
    assert len({entry.request_id for entry in entries}) == 2
    assert all(entry.cost_nanos > 0 for entry in entries)


def test_an_outage_with_a_fallback_over_budget_is_the_outage_not_the_budget(
    tenant, chat_client, upstreams, settings
):
    """The first target failed; the next one's worst case does not fit what is left of the budget.
    The answer is the retryable upstream failure, not budget_exceeded (insufficient_quota on /v1,
    which tells OpenAI clients never to retry)."""
    from decimal import Decimal

    from billing.services import budget_update

    openai_server, _ = upstreams
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = ["openai:gpt-4o-mini", "anthropic:claude-opus-4-1"]
    budget_update(tenant=tenant, actor="t", monthly_budget_usd=Decimal("0.01"))  # mini fits, opus not
    openai_server.then("500", "500")
    response = ask(chat_client, max_tokens=1000)
    assert response.status_code == 502, response.json()
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert "anthropic:claude-opus-4-1" in response.json()["error"]["message"]
    assert not UsageEntry.objects.exists()
    assert not Reservation.objects.exists()
    budget_update(tenant=tenant, actor="t", monthly_budget_usd=Decimal("0.00"))
    refused = ask(chat_client, max_tokens=1000)  # nothing failed first: the budget is the answer
    assert (refused.status_code, refused.json()["error"]["code"]) == (402, "budget_exceeded")
