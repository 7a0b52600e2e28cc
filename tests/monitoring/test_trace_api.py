"""GET /api/v1/traces and /api/v1/traces/{id}, and what the chat pipeline records on a trace: the
conversation, the refusal reason, and the question and answer (or only their sizes and hashes)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import openai
import pytest
from django.utils import timezone

from monitoring.models import Feedback, Trace
from tests.chat.conftest import _chat_state  # noqa: F401  # autouse: prices, caches, fast timeouts
from tests.monitoring.conftest import make_trace

QUESTION = "What is the capital of France?"
ANSWER = "Paris is the capital of France."


def listed(reader, **query) -> list[str]:
    response = reader.get("/api/v1/traces", query)
    assert response.status_code == 200, response.json()
    return [trace["request_id"] for trace in response.json()["results"]]


def test_filters(tenant, other_tenant, reader):
    conversation = uuid.uuid4()
    now = timezone.now()
    make_trace(
        tenant, request_id="old", created_at=now - timedelta(days=2), model="gpt-4o", provider="openai"
    )
    make_trace(
        tenant,
        request_id="refused",
        status="refused",
        error="over budget",
        refusal_reason="budget",
        end_user="alice",
    )
    make_trace(
        tenant,
        request_id="prompted",
        prompt_name="support",
        prompt_version=2,
        prompt_variant=11,
        conversation_id=conversation,
        cached=True,
        provider="anthropic",
        model="claude-haiku-4-5",
        end_user="bob",
    )
    make_trace(tenant, request_id="failed", status="error", error="boom", refusal_reason="")
    make_trace(other_tenant, request_id="theirs", end_user="alice", cached=True)

    assert listed(reader) == ["failed", "prompted", "refused", "old"]
    assert listed(reader, created_before=(now - timedelta(days=1)).isoformat()) == ["old"]
    assert listed(reader, created_after=(now - timedelta(days=1)).isoformat()) == [
        "failed",
        "prompted",
        "refused",
    ]
    assert listed(reader, status="refused") == ["refused"]
    assert listed(reader, refusal_reason="budget") == ["refused"]
    assert listed(reader, refusal_reason="guard") == []
    assert listed(reader, model="claude-haiku-4-5") == ["prompted"]
    assert listed(reader, provider="openai") == ["old"]
    assert listed(reader, prompt="support", prompt_version=2, prompt_variant=11) == ["prompted"]
    assert listed(reader, prompt_version=3) == []
    assert listed(reader, user="alice") == ["refused"]
    assert listed(reader, conversation=str(conversation)) == ["prompted"]
    assert listed(reader, cached="true") == ["prompted"]
    assert listed(reader, cached="false") == ["failed", "refused", "old"]
    first = reader.get("/api/v1/traces", {"status": "refused"}).json()["results"][0]
    assert (first["refusal_reason"], first["error"], first["user"]) == ("budget", "over budget", "alice")
    assert not {"request", "answer", "spans", "feedback"} & first.keys()  # the list stays small


def test_cursor_pagination_walks_every_trace_once_newest_first(tenant, reader):
    now = timezone.now()
    for n in range(7):
        make_trace(tenant, request_id=f"r{n}", created_at=now - timedelta(minutes=n))
    seen, url = [], "/api/v1/traces?limit=3"
    while url:
        page = reader.get(url).json()
        seen += [trace["request_id"] for trace in page["results"]]
        url = page["next"]
    assert seen == [f"r{n}" for n in range(7)]
    make_trace(tenant, request_id="new")  # written while paging: the next page does not shift
    page = reader.get("/api/v1/traces?limit=3").json()
    rest = reader.get(page["next"]).json()["results"]
    assert [t["request_id"] for t in rest] == ["r2", "r3", "r4"]


@pytest.mark.parametrize(
    "query",
    [
        "status=lost",
        "refusal_reason=tired",
        "cached=maybe",
        "conversation=123",
        "prompt_version=0",
        "prompt_variant=x",
        "created_before=soon",
        "limit=-1",
        "cursor=%00",
        "modle=gpt-4o",
    ],
)
def test_bad_query_parameters_are_400(reader, query):
    response = reader.get(f"/api/v1/traces?{query}")
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_traces_need_the_traces_read_scope(chat_key_client, api_client, reader):
    assert chat_key_client.get("/api/v1/traces").status_code == 403
    assert reader.get("/api/v1/traces").status_code == 200
    assert api_client.get("/api/v1/traces").status_code == 200  # admin implies it


def test_detail_has_spans_feedback_and_text(tenant, other_tenant, reader):
    trace = make_trace(tenant, spans=("guard_input", "provider"), request_text="q", answer_text="a")
    Feedback.objects.create(tenant=tenant, trace=trace, score=1, end_user="alice")
    body = reader.get(f"/api/v1/traces/{trace.id}").json()
    assert [span["name"] for span in body["spans"]] == ["guard_input", "provider"]
    assert [(f["user"], f["score"]) for f in body["feedback"]] == [("alice", 1.0)]
    assert body["request"]["text"] == "q"
    assert body["answer"]["text"] == "a"
    foreign = make_trace(other_tenant)
    assert reader.get(f"/api/v1/traces/{foreign.id}").status_code == 404
    assert reader.get(f"/api/v1/traces/{uuid.uuid4()}").status_code == 404


def test_chat_text_and_conversation_through_the_api(tenant, chat_client, reader, upstreams):
    answer = chat_client.post("/api/v1/chat", {"message": QUESTION, "user": "alice"}, format="json").json()
    trace = reader.get(f"/api/v1/traces/{answer['trace_id']}").json()
    assert trace["request"] == {
        "text": QUESTION,
        "bytes": len(QUESTION.encode()),
        "sha256": hashlib.sha256(QUESTION.encode()).hexdigest(),
    }
    assert trace["answer"]["text"] == ANSWER
    assert listed(reader, conversation=answer["conversation_id"]) == [answer["id"]]
    # /api/v1/chat's `id` (the request id) is enough to send feedback
    feedback = chat_client.post("/api/v1/feedback", {"trace_id": answer["id"], "score": 1}, format="json")
    assert feedback.status_code == 201
    assert feedback.json()["user"] == "alice"


def test_privacy_mode_shows_sizes_and_hashes_only(tenant, chat_client, reader, upstreams):
    tenant.store_trace_text = False
    tenant.save()
    answer = chat_client.post("/api/v1/chat", {"message": QUESTION}, format="json").json()
    trace = reader.get(f"/api/v1/traces/{answer['trace_id']}").json()
    assert trace["request"]["text"] is None
    assert trace["answer"] == {
        "text": None,
        "bytes": len(ANSWER),
        "sha256": hashlib.sha256(ANSWER.encode()).hexdigest(),
    }
    assert listed(reader, refusal_reason="budget") == []


@pytest.mark.django_db(transaction=True)
def test_a_completion_id_from_the_openai_sdk_is_enough_for_feedback(live_server, tenant, make_key, upstreams):
    _, raw_key = make_key(tenant, scopes=["chat"])
    client = openai.OpenAI(api_key=raw_key, base_url=f"{live_server.url}/v1", max_retries=0)
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": QUESTION}], user="alice"
    )
    # The SDK's generic POST, as the README shows it, against our /api/v1 from the /v1 base URL.
    feedback = client.post(
        f"{live_server.url}/api/v1/feedback",
        body={"trace_id": completion.id, "score": -1, "comment": "too short"},
        cast_to=object,
    )
    assert feedback["trace_id"] == str(Trace.objects.get().pk)
    assert Feedback.objects.get().end_user == "alice"
