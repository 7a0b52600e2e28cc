"""What the chat pipeline records on a trace: the question and the answer (or, in privacy mode, only
their sizes and hashes), the conversation, and why a refused request was refused."""

from __future__ import annotations

import hashlib

from monitoring.metrics import refusal_reason
from monitoring.models import Trace
from tests.chat.conftest import _chat_state  # noqa: F401  # autouse: prices, caches, fast timeouts

QUESTION = "What is the capital of France?"
ANSWER = "Paris is the capital of France."


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_chat_records_question_answer_and_conversation(tenant, chat_client, upstreams):
    answer = chat_client.post("/api/v1/chat", {"message": QUESTION, "user": "alice"}, format="json").json()
    row = Trace.objects.get(pk=answer["trace_id"])
    assert (row.request_text, row.request_bytes, row.request_sha256) == (
        QUESTION,
        len(QUESTION),
        sha256(QUESTION),
    )
    assert (row.answer_text, row.answer_bytes, row.answer_sha256) == (ANSWER, len(ANSWER), sha256(ANSWER))
    assert str(row.conversation_id) == answer["conversation_id"]
    follow_up = chat_client.post(
        "/api/v1/chat", {"message": "And Italy?", "conversation_id": answer["conversation_id"]}, format="json"
    ).json()
    assert str(Trace.objects.get(pk=follow_up["trace_id"]).conversation_id) == answer["conversation_id"]
    assert row.refusal_reason == ""


def test_a_cached_answer_is_recorded_too(tenant, chat_client, upstreams):
    chat_client.post("/api/v1/chat", {"message": QUESTION, "temperature": 0}, format="json")
    again = chat_client.post("/api/v1/chat", {"message": QUESTION, "temperature": 0}, format="json").json()
    row = Trace.objects.get(pk=again["trace_id"])
    assert row.cached
    assert (row.request_text, row.answer_text) == (QUESTION, ANSWER)


def test_privacy_mode_stores_no_text(tenant, chat_client, upstreams):
    tenant.store_trace_text = False
    tenant.save()
    answer = chat_client.post("/api/v1/chat", {"message": QUESTION}, format="json").json()
    row = Trace.objects.get(pk=answer["trace_id"])
    assert (row.request_text, row.answer_text) == ("", "")
    assert (row.request_bytes, row.request_sha256) == (len(QUESTION), sha256(QUESTION))
    assert (row.answer_bytes, row.answer_sha256) == (len(ANSWER), sha256(ANSWER))
    stored = " ".join(str(value) for value in Trace.objects.filter(pk=row.pk).values().get().values())
    stored += " ".join(str(span.attributes) for span in row.spans.all())
    assert "Paris" not in stored
    assert "capital" not in stored


def test_a_refusal_records_its_reason(tenant, chat_client, upstreams):
    tenant.allowed_models = ["local"]
    tenant.save()
    refused = chat_client.post("/api/v1/chat", {"message": QUESTION, "model": "gpt-4o"}, format="json")
    assert refused.status_code == 403
    trace = Trace.objects.get()
    assert (trace.status, trace.refusal_reason) == ("refused", "model_not_allowed")
    assert trace.request_text == QUESTION


def test_refusal_reasons_of_error_codes():
    assert [
        refusal_reason(code)
        for code in (
            "budget_exceeded",
            "requests_per_minute_exceeded",
            "tokens_per_minute_exceeded",
            "request_over_tokens_per_minute",
            "monthly_token_quota_exceeded",
            "prompt_injection_detected",
            "input_too_large",
            "model_not_allowed",
            "model_not_found",
        )
    ] == [
        "budget",
        "rate_limit_requests",
        "rate_limit_tokens",
        "rate_limit_tokens",
        "monthly_quota",
        "guard",
        "guard",
        "model_not_allowed",
        "other",
    ]


def test_every_refusal_reason_the_metrics_count_can_be_stored_on_a_trace():
    from monitoring.metrics import REFUSAL_REASONS
    from monitoring.models import RefusalReason

    assert {*REFUSAL_REASONS.values(), refusal_reason("anything else")} == set(RefusalReason.values)
