"""Chat over the tenant's documents: context in the prompt, citations (JSON, SSE, OpenAI-compatible),
the retrieval span, tenant isolation, and the semantic cache."""

from __future__ import annotations

import json

import openai
import pytest
from django.core.exceptions import ValidationError

from billing.models import UsageEntry
from chat.documents import document_create, document_delete, document_ingest, documents_cache
from chat.embeddings import get_embedder
from chat.models import SemanticCacheEntry
from chat.services import chat_settings_for, chat_settings_update
from monitoring.models import Trace
from tests.chat.corpus import DOCUMENTS
from tests.conftest import client_with_key


@pytest.fixture
def local_chain(settings):
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = ["local:local"]


def ingest(tenant, title: str, text: str):
    document, _ = document_create(
        tenant=tenant, content=text.encode(), content_type="text/plain", title=title, enqueue=False
    )
    return document_ingest(document_id=document.pk)


def ingest_corpus(tenant) -> dict[str, str]:
    return {title: str(ingest(tenant, title, text).pk) for title, text in DOCUMENTS.items()}


def ask(client, message: str, **fields):
    return client.post("/api/v1/chat", {"message": message, **fields}, format="json")


def spans(trace_id) -> dict[str, dict]:
    trace = Trace.objects.get(pk=trace_id)
    return {span.name: span.attributes | {"status": span.status} for span in trace.spans.all()}


def test_chat_answers_from_the_documents_with_citations(tenant, chat_client, local_chain):
    ids = ingest_corpus(tenant)
    response = ask(chat_client, "How often is the espresso machine descaled?")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["answer"].startswith("From your documents:")
    assert "descaling runs every two months" in body["answer"]
    top = body["citations"][0]
    assert top["document_id"] == ids["Espresso machine"]
    assert top["title"] == "Espresso machine"
    assert top["chunk_ordinal"] == 0
    assert 0 < top["score"] <= 1
    assert "descaling" in top["snippet"]
    retrieval = spans(body["trace_id"])["retrieval"]
    assert retrieval["k"] == 5
    assert retrieval["chunk_ids"]
    assert retrieval["query_ms"] >= 0
    assert len(retrieval["chunk_ids"]) == len(body["citations"])


def test_rag_is_off_without_documents_and_when_the_request_says_so(tenant, chat_client, local_chain):
    plain = ask(chat_client, "How often is the espresso machine descaled?").json()
    assert plain["citations"] == []
    assert "retrieval" not in spans(plain["trace_id"])
    ingest_corpus(tenant)
    refused = ask(chat_client, "How often is the espresso machine descaled?", rag=False).json()
    assert refused["citations"] == []
    assert "retrieval" not in spans(refused["trace_id"])
    chat_settings_update(tenant=tenant, actor="t", rag_enabled=False)
    assert ask(chat_client, "How often is the espresso machine descaled?").json()["citations"] == []
    asked = ask(chat_client, "How often is the espresso machine descaled?", rag=True).json()
    assert asked["citations"]


def test_context_goes_to_the_provider_before_the_question(tenant, chat_client, settings, openai_server):
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = ["openai:gpt-4o-mini"]
    ingest_corpus(tenant)
    assert ask(chat_client, "Where is the fertilizer stored?").status_code == 200
    messages = openai_server.requests[-1]["body"]["messages"]
    assert messages[-1] == {"role": "user", "content": "Where is the fertilizer stored?"}
    assert messages[-2]["role"] == "system"
    assert "Context:" in messages[-2]["content"]
    assert "[1] Office plants (part 1):" in messages[-2]["content"]


def test_context_respects_its_token_budget(tenant, chat_client, local_chain, settings):
    settings.RAG_CONTEXT_TOKENS = 80  # room for one of the corpus chunks only
    ingest_corpus(tenant)
    body = ask(chat_client, "How many weeks of parental leave do employees get?").json()
    assert [c["title"] for c in body["citations"]] == ["Parental leave"]


def test_streamed_chat_ends_with_the_citations(tenant, chat_client, local_chain):
    ids = ingest_corpus(tenant)
    response = ask(chat_client, "Where is the fertilizer stored?", stream=True)
    events = [
        json.loads(block.split("data: ", 1)[1])
        for block in b"".join(response.streaming_content).decode().strip().split("\n\n")
        if block.startswith("event: done")
    ]
    assert events[0]["citations"][0]["document_id"] == ids["Office plants"]


def test_openai_sdk_can_ask_for_rag_and_gets_citations(tenant, make_key, live_server, local_chain):
    ids = ingest_corpus(tenant)
    raw_key = make_key(tenant, scopes=["chat"])[1]
    client = openai.OpenAI(api_key=raw_key, base_url=f"{live_server.url}/v1", max_retries=0)
    completion = client.chat.completions.create(
        model="local",
        messages=[{"role": "user", "content": "Can we deploy to production on Friday?"}],
        extra_body={"rag": True},
    )
    assert "Friday" in completion.choices[0].message.content
    assert completion.model_extra["citations"][0]["document_id"] == ids["Deployment runbook"]
    plain = client.chat.completions.create(
        model="local", messages=[{"role": "user", "content": "Can we deploy to production on Friday?"}]
    )
    assert "citations" not in (plain.model_extra or {})


@pytest.mark.parametrize("stream", [False, True])
def test_openai_sdk_asking_for_rag_always_gets_the_citations_list(
    tenant, make_key, live_server, local_chain, stream
):
    """Without documents, or without a match, the list is empty, never missing (a KeyError)."""
    raw_key = make_key(tenant, scopes=["chat"])[1]
    client = openai.OpenAI(api_key=raw_key, base_url=f"{live_server.url}/v1", max_retries=0)
    question = [{"role": "user", "content": "Can we deploy to production on Friday?"}]
    if stream:
        chunks = list(
            client.chat.completions.create(
                model="local", messages=question, stream=True, extra_body={"rag": True}
            )
        )
        finish = next(chunk for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason)
        assert finish.model_extra["citations"] == []
    else:
        completion = client.chat.completions.create(
            model="local", messages=question, extra_body={"rag": True}
        )
        assert completion.model_extra["citations"] == []


def test_citations_never_come_from_another_tenant(tenant, other_tenant, make_key, local_chain):
    ingest_corpus(other_tenant)
    ingest(tenant, "Our kitchen", "The kettle is descaled every week.")
    mine = {str(d) for d in tenant.chat_document_set.values_list("id", flat=True)}
    client = client_with_key(make_key(tenant, scopes=["chat"])[1])
    for question in ["How often is the espresso machine descaled?", "Where is the fertilizer stored?"]:
        body = ask(client, question).json()
        assert {c["document_id"] for c in body["citations"]} <= mine


# --- the semantic cache -------------------------------------------------------------------------------


@pytest.fixture
def semantic_cache(tenant):
    chat_settings_update(tenant=tenant, actor="t", semantic_cache_enabled=True, semantic_cache_threshold=0.9)


def similarity(a: str, b: str) -> float:
    left, right = get_embedder().embed([a, b])
    return float(left @ right)


QUESTION = "How many weeks of paid parental leave do employees receive?"
NEAR = "How many weeks of paid parental leave do employees receive in total?"  # similarity 0.94
OTHER = "How many weeks of paid vacation do contractors receive?"


def test_semantic_cache_answers_close_questions_at_no_cost(
    tenant, chat_client, openai_server, settings, semantic_cache
):
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = ["openai:gpt-4o-mini"]
    assert similarity(QUESTION, NEAR) >= 0.9 > similarity(QUESTION, OTHER)
    first = ask(chat_client, QUESTION, temperature=0).json()
    assert first["cached"] is False
    calls = len(openai_server.requests)
    near = ask(chat_client, NEAR, temperature=0).json()
    assert near["cached"] is True
    assert near["answer"] == first["answer"]
    assert float(near["usage"]["cost_usd"]) == 0
    assert len(openai_server.requests) == calls  # no provider call
    assert UsageEntry.objects.get(request_id=near["id"]).kind == "cache_hit"
    assert UsageEntry.objects.get(request_id=near["id"]).cost_nanos == 0
    cache_span = [s for s in Trace.objects.get(pk=near["trace_id"]).spans.all() if s.name == "cache"]
    semantic = next(s for s in cache_span if s.attributes["kind"] == "semantic")
    assert semantic.attributes["hit"] is True
    assert semantic.attributes["similarity"] >= 0.9
    other = ask(chat_client, OTHER, temperature=0).json()
    assert other["cached"] is False
    assert len(openai_server.requests) == calls + 1


def test_semantic_cache_keeps_no_answer_from_a_fallback(
    tenant, chat_client, upstreams, settings, semantic_cache
):
    settings.CHAT_MAX_RETRIES = 0
    openai_server, anthropic_server = upstreams
    openai_server.then("500")
    anthropic_server.then("500")
    assert ask(chat_client, QUESTION, temperature=0).json()["provider"] == "local"
    again = ask(chat_client, NEAR, temperature=0).json()
    assert (again["provider"], again["cached"]) == ("openai", False)


def test_semantic_cache_threshold_is_the_tenants(tenant, chat_client, local_chain, semantic_cache):
    chat_settings_update(tenant=tenant, actor="t", semantic_cache_threshold=1.0)
    ask(chat_client, QUESTION, temperature=0)
    assert similarity(QUESTION, NEAR) < 1.0
    assert ask(chat_client, NEAR, temperature=0).json()["cached"] is False
    chat_settings_update(tenant=tenant, actor="t", semantic_cache_threshold=0.9)
    assert ask(chat_client, NEAR, temperature=0).json()["cached"] is True


def test_semantic_cache_is_per_tenant(
    tenant, other_tenant, chat_client, make_key, local_chain, semantic_cache
):
    chat_settings_update(tenant=other_tenant, actor="t", semantic_cache_enabled=True)
    ask(chat_client, QUESTION, temperature=0)
    other = client_with_key(make_key(other_tenant, scopes=["chat"])[1])
    assert ask(other, QUESTION, temperature=0).json()["cached"] is False
    assert SemanticCacheEntry.objects.filter(tenant=other_tenant).count() == 1


def test_semantic_cache_is_off_for_multi_turn_and_warm_requests(
    tenant, chat_client, local_chain, semantic_cache
):
    first = ask(chat_client, QUESTION, temperature=0).json()
    follow_up = ask(chat_client, QUESTION, temperature=0, conversation_id=first["conversation_id"]).json()
    assert follow_up["cached"] is False  # inside a conversation: earlier turns change the meaning
    assert ask(chat_client, NEAR, temperature=1).json()["cached"] is False  # sampling: no caching at all
    chat_settings_update(tenant=tenant, actor="t", semantic_cache_multi_turn=True)
    again = ask(chat_client, NEAR, temperature=0, conversation_id=first["conversation_id"]).json()
    assert again["cached"] is True


def test_semantic_cache_is_per_model_and_prompt_version(
    tenant, chat_client, settings, semantic_cache, upstreams
):
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = ["local:local"]
    ask(chat_client, QUESTION, temperature=0)
    assert ask(chat_client, QUESTION, temperature=0, model="gpt-4o-mini").json()["cached"] is False


def test_semantic_cache_is_per_prompt_version_variables_and_max_tokens(
    tenant, chat_client, local_chain, semantic_cache, support_prompt
):
    def cached(question: str, **fields) -> bool:
        fields = {"prompt": "support", "version": 1, "variables": {"company": "Acme"}, **fields}
        response = ask(chat_client, question, temperature=0, **fields)
        assert response.status_code == 200, response.content
        return response.json()["cached"]

    assert cached(QUESTION) is False
    assert cached(NEAR) is True
    # Another end user's variables: the answer was written for Acme, never served to Globex.
    assert cached(NEAR, variables={"company": "Globex"}) is False
    assert cached(NEAR, version=2) is False
    assert cached(NEAR, max_tokens=300) is False  # long enough for a whole (cacheable) answer
    assert SemanticCacheEntry.objects.filter(tenant=tenant).count() == 4


def test_semantic_cache_tells_answers_with_and_without_documents_apart(
    tenant, chat_client, local_chain, semantic_cache
):
    ingest(tenant, "Leave", "Employees receive sixteen weeks of paid parental leave.")
    without = ask(chat_client, QUESTION, temperature=0, rag=False).json()
    assert without["citations"] == []
    with_documents = ask(chat_client, NEAR, temperature=0, rag=True).json()
    assert with_documents["cached"] is False
    assert with_documents["citations"]
    assert ask(chat_client, NEAR, temperature=0, rag=False).json()["cached"] is True


def test_an_answer_stored_after_the_documents_changed_is_never_served(
    tenant, chat_client, local_chain, semantic_cache
):
    ingest(tenant, "Leave", "Employees receive sixteen weeks of paid parental leave.")
    assert ask(chat_client, QUESTION, temperature=0).json()["citations"]
    # A request still answering from the old documents stores its entry after the purge: the entry
    # exists, but it belongs to the documents as they were.
    documents_cache.invalidate(str(tenant.pk))
    assert SemanticCacheEntry.objects.filter(tenant=tenant).exists()
    assert ask(chat_client, NEAR, temperature=0).json()["cached"] is False


def test_a_question_without_content_words_is_answered_and_never_cached(
    tenant, chat_client, local_chain, semantic_cache
):
    questions = ["Is it?", "Was it so?"]  # the second used to meet the first's zero vector: NaN, a 500
    assert not get_embedder().embed(questions).any()
    for question in questions:
        response = ask(chat_client, question, temperature=0)
        assert response.status_code == 200, response.content
        assert response.json()["cached"] is False
        assert Trace.objects.filter(pk=response.json()["trace_id"]).exists()
    assert not SemanticCacheEntry.objects.filter(tenant=tenant).exists()


def test_a_document_change_empties_the_semantic_cache(tenant, chat_client, local_chain, semantic_cache):
    document = ingest(tenant, "Leave", "Employees receive sixteen weeks of paid parental leave.")
    first = ask(chat_client, QUESTION, temperature=0).json()
    assert first["citations"]
    assert ask(chat_client, NEAR, temperature=0).json()["cached"] is True
    document_delete(tenant=tenant, document_id=document.pk)
    after = ask(chat_client, NEAR, temperature=0).json()
    assert after["cached"] is False
    assert after["citations"] == []


def test_bad_rag_and_semantic_inputs_are_refused(chat_client, tenant):
    assert ask(chat_client, "hi", rag="maybe").status_code == 400
    chat_settings_for(tenant=tenant)
    with pytest.raises(ValidationError, match=r"0\.5"):
        chat_settings_update(tenant=tenant, actor="t", semantic_cache_threshold=0.1)
    tenant.chat_settings.refresh_from_db()
    assert tenant.chat_settings.semantic_cache_threshold == 0.95


def test_embeddings_down_the_semantic_cache_is_skipped_and_the_question_answered(
    tenant, chat_client, upstreams, settings, semantic_cache
):
    settings.EMBEDDING_BACKEND = "openai"
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = ["openai:gpt-4o-mini"]
    openai_server, _ = upstreams
    openai_server.then("500")  # the query's embedding; the completion after it is fine
    response = ask(chat_client, QUESTION, temperature=0)
    assert response.status_code == 200, response.content
    paths = [request["path"] for request in openai_server.requests]
    assert paths == ["/v1/embeddings", "/v1/chat/completions"]  # one attempt at the embedding
    assert spans(response.json()["trace_id"])["semantic_cache"]["status"] == "skipped"
    assert not SemanticCacheEntry.objects.exists()


def test_embeddings_down_a_question_over_the_documents_is_503_and_charges_nothing(
    tenant, chat_client, upstreams, settings
):
    settings.EMBEDDING_BACKEND = "openai"
    openai_server, _ = upstreams
    openai_server.then("500")
    response = ask(chat_client, QUESTION, rag=True)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "embeddings_unavailable"
    assert response["Retry-After"]
    assert [request["path"] for request in openai_server.requests] == ["/v1/embeddings"]
    assert not UsageEntry.objects.exists()


def test_a_query_embedding_trickling_past_its_timeout_is_503(tenant, chat_client, upstreams, settings):
    """Every piece of the embedding comes well within a read timeout; the whole of it does not come
    within EMBEDDING_QUERY_TIMEOUT_SECONDS, which bounds the call, not each wait."""
    settings.EMBEDDING_BACKEND = "openai"
    settings.EMBEDDING_QUERY_TIMEOUT_SECONDS = 0.5
    openai_server, _ = upstreams
    openai_server.then("drip")  # 3 s in 15 pieces
    response = ask(chat_client, QUESTION, rag=True)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "embeddings_unavailable"
    assert not UsageEntry.objects.exists()
