"""POST/GET /api/v1/feedback: one score per (trace, name, end user), validated per metric, only on the
tenant's own traces, counted in llm_feedback_total."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from prometheus_client import REGISTRY

from monitoring.models import Feedback, FeedbackMetric
from tenants.models import Scope
from tenants.services import api_key_create
from tests.conftest import client_with_key
from tests.monitoring.conftest import make_trace


def post(client, **body):
    return client.post("/api/v1/feedback", body, format="json")


def test_a_trace_is_named_by_its_id_request_id_or_completion_id_and_a_repeat_updates(tenant, chat_key_client):
    trace = make_trace(tenant, end_user="alice", prompt_name="support", prompt_version=3, prompt_variant=7)
    first = post(chat_key_client, trace_id=str(trace.id), score=1, comment="great")
    assert first.status_code == 201
    body = first.json()
    assert body["trace_id"] == str(trace.id)
    assert (body["name"], body["score"], body["user"], body["comment"]) == ("rating", 1.0, "alice", "great")
    assert (body["prompt_name"], body["prompt_version"], body["prompt_variant"]) == ("support", 3, 7)

    by_request_id = post(chat_key_client, trace_id=trace.request_id, score=-1)
    assert by_request_id.status_code == 200
    assert by_request_id.json()["id"] == body["id"]
    assert by_request_id.json()["comment"] == "great"  # left out: kept

    by_completion_id = post(chat_key_client, trace_id=f"chatcmpl-{trace.request_id}", score=1, comment="")
    assert by_completion_id.status_code == 200
    row = Feedback.objects.get()
    assert (row.score, row.comment, row.end_user) == (1.0, "", "alice")

    other_user = post(chat_key_client, trace_id=str(trace.id), score=-1, user="bob")
    other_name = post(chat_key_client, trace_id=str(trace.id), score=-1, name="helpful")
    assert (other_user.status_code, other_name.status_code) == (201, 201)
    assert Feedback.objects.count() == 3


def test_scores_are_validated_per_metric_and_bad_ones_change_nothing(tenant, chat_key_client):
    trace = make_trace(tenant)
    FeedbackMetric.objects.create(tenant=tenant, name="stars", kind="scale", scale_min=1, scale_max=5)
    bad = [
        {"score": 0},  # rating, undeclared: thumbs
        {"score": 5},
        {"name": "anything", "score": 0.5},  # undeclared: thumbs too
        {"name": "stars", "score": 6},
        {"name": "stars", "score": 0.5},
        {"score": "high"},
        {"name": "not a slug", "score": 1},
        {"score": 1, "user": "a\x00b"},
        {},
    ]
    for body in bad:
        response = post(chat_key_client, trace_id=str(trace.id), **body)
        assert response.status_code == 400, body
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert post(chat_key_client, trace_id=str(trace.id), score=1.0).status_code == 201
    stars = post(chat_key_client, trace_id=str(trace.id), name="stars", score=4)
    assert stars.status_code == 201
    assert post(chat_key_client, trace_id=str(trace.id), name="stars", score=4.5).status_code == 200
    assert sorted(Feedback.objects.values_list("name", "score")) == [("rating", 1.0), ("stars", 4.5)]
    nan = chat_key_client.post(
        "/api/v1/feedback", f'{{"trace_id": "{trace.id}", "score": NaN}}', content_type="application/json"
    )
    assert nan.status_code == 400


def test_unknown_or_another_tenants_trace_is_404_and_writes_nothing(tenant, other_tenant, chat_key_client):
    foreign = make_trace(other_tenant, request_id="theirs")
    for reference in (str(foreign.id), "theirs", "chatcmpl-theirs", str(uuid.uuid4()), "nonsense"):
        response = post(chat_key_client, trace_id=reference, score=1)
        assert response.status_code == 404, reference
        assert response.json()["error"]["type"] == "not_found_error"
        assert response.json()["error"]["code"] == "trace_not_found"
    assert not Feedback.objects.exists()


def test_feedback_may_arrive_days_after_its_trace(tenant, chat_key_client):
    trace = make_trace(tenant, created_at=timezone.now() - timedelta(days=6))
    assert post(chat_key_client, trace_id=str(trace.id), score=-1).status_code == 201


def test_scopes_chat_writes_traces_read_reads(tenant, make_key, chat_key_client, reader):
    trace = make_trace(tenant)
    documents_only = client_with_key(make_key(tenant, scopes=[Scope.DOCUMENTS])[1])
    assert post(documents_only, trace_id=str(trace.id), score=1).status_code == 403
    assert post(reader, trace_id=str(trace.id), score=1).status_code == 403
    assert chat_key_client.get("/api/v1/feedback").status_code == 403
    assert post(chat_key_client, trace_id=str(trace.id), score=1).status_code == 201
    assert reader.get("/api/v1/feedback").status_code == 200


def test_each_write_counts_in_llm_feedback_total(tenant, chat_key_client):
    trace = make_trace(tenant)

    def count(score: str) -> float:
        return REGISTRY.get_sample_value("llm_feedback_total", {"name": "rating", "score": score}) or 0.0

    before = count("-1"), count("1")
    post(chat_key_client, trace_id=str(trace.id), score=-1)
    post(chat_key_client, trace_id=str(trace.id), score=1.0)
    post(chat_key_client, trace_id=str(trace.id), score=2)  # refused: not counted
    assert (count("-1"), count("1")) == (before[0] + 1, before[1] + 1)


def test_list_filters_and_pages_with_a_cursor(tenant, other_tenant, chat_key_client, reader):
    first, second = make_trace(tenant), make_trace(tenant)
    make_trace(other_tenant)
    FeedbackMetric.objects.create(tenant=tenant, name="stars", kind="scale", scale_min=1, scale_max=5)
    for user in ("u1", "u2", "u3"):
        post(chat_key_client, trace_id=str(first.id), score=1, user=user)
    post(chat_key_client, trace_id=str(second.id), score=-1, user="u1")
    post(chat_key_client, trace_id=str(second.id), name="stars", score=4, user="u1")
    Feedback.objects.create(tenant=other_tenant, trace=make_trace(other_tenant), score=1, end_user="u1")

    def listed(**query) -> list[tuple[str, str, float]]:
        response = reader.get("/api/v1/feedback", query)
        assert response.status_code == 200, response.json()
        return [(f["user"], f["name"], f["score"]) for f in response.json()["results"]]

    assert len(listed()) == 5
    assert listed(trace=str(second.id)) == [("u1", "stars", 4.0), ("u1", "rating", -1.0)]
    assert listed(name="stars") == [("u1", "stars", 4.0)]
    assert sorted(listed(user="u1")) == [("u1", "rating", -1.0), ("u1", "rating", 1.0), ("u1", "stars", 4.0)]
    assert listed(score="-1") == [("u1", "rating", -1.0)]
    assert listed(created_after=(timezone.now() + timedelta(seconds=1)).isoformat()) == []
    assert len(listed(created_before=(timezone.now() + timedelta(seconds=1)).isoformat())) == 5

    seen, url = [], "/api/v1/feedback?limit=2"
    while url:
        page = reader.get(url).json()
        assert len(page["results"]) <= 2
        seen += [f["id"] for f in page["results"]]
        url = page["next"]
    assert len(seen) == len(set(seen)) == 5
    assert seen == sorted(seen, reverse=True)  # newest first


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=201",
        "limit=two",
        "cursor=not-a-cursor",
        "created_after=yesterday",
        "score=NaN",
        "trace=123",
        "name=not%20a%20slug",
        "colour=blue",
        "created_after=2026-01-02T00:00:00Z&created_before=2026-01-01T00:00:00Z",
    ],
)
def test_bad_query_parameters_are_400(reader, query):
    response = reader.get(f"/api/v1/feedback?{query}")
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.django_db(transaction=True)
def test_concurrent_repeats_leave_one_row(tenant):
    trace = make_trace(tenant, end_user="alice")
    _, raw = api_key_create(tenant=tenant, name="k", scopes=[Scope.CHAT], actor="test")
    scores = [1 if n % 2 else -1 for n in range(16)]
    start = threading.Barrier(len(scores))

    def send(score: int) -> int:
        client = client_with_key(raw)
        start.wait()  # all at once: the race is the point
        try:
            return post(client, trace_id=str(trace.id), score=score).status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(send, scores))
    assert sorted(set(statuses)) in ([200, 201], [201])
    assert statuses.count(201) == 1
    row = Feedback.objects.get()
    assert (row.trace_id, row.name, row.end_user) == (trace.id, "rating", "alice")
    assert row.score in (1.0, -1.0)
