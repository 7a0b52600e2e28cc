"""Retrieval: relevance on a fixed corpus, tenant isolation, full recall for a small tenant among a
large corpus, per-tenant HNSW indexes, embedders and the query-embedding cache."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection

from chat import embeddings
from chat.documents import document_create, document_ingest
from chat.embeddings import (
    EmbeddingConfigurationError,
    HashingEmbedder,
    MiniLMEmbedder,
    embed_query,
    get_embedder,
)
from chat.models import Chunk, Document, DocumentStatus
from chat.retrieval import (
    NEAREST_CHUNKS_SQL,
    nearest_chunks,
    retrieve,
    tenant_vector_index_name,
    tenant_vector_index_sync,
    tenant_vector_indexes,
    vector_indexes_sync,
    vector_literal,
)
from chat.transport import StdlibTransport
from tenants.services import tenant_create
from tests.chat.corpus import DOCUMENTS, QUESTIONS
from tests.conftest import client_with_key


def ingest_corpus(tenant) -> dict[str, str]:
    """title -> document id"""
    ids = {}
    for title, text in DOCUMENTS.items():
        document, _ = document_create(
            tenant=tenant, content=text.encode(), content_type="text/plain", title=title, enqueue=False
        )
        document_ingest(document_id=document.pk)
        ids[title] = str(document.pk)
    return ids


def test_the_right_document_is_top_1_for_its_questions(tenant):
    ingest_corpus(tenant)
    for title, questions in QUESTIONS.items():
        for question in questions:
            found = retrieve(tenant_id=tenant.pk, query=question, k=3)
            assert found.chunks, question
            assert found.chunks[0].title == title, (question, [c.title for c in found.chunks])
            others = [chunk.score for chunk in found.chunks if chunk.title != title]
            assert all(found.chunks[0].score > score for score in others)


def test_a_tenant_never_retrieves_another_tenants_chunks(tenant, other_tenant, make_key):
    ingest_corpus(other_tenant)
    mine, _ = document_create(
        tenant=tenant, content=b"Our own refund rules differ.", content_type="text/plain", enqueue=False
    )
    document_ingest(document_id=mine.pk)
    theirs = set(Chunk.objects.filter(tenant=other_tenant).values_list("id", flat=True))
    for questions in QUESTIONS.values():
        for question in questions:
            found = retrieve(tenant_id=tenant.pk, query=question, k=10, min_score=-1)
            assert {chunk.chunk_id for chunk in found.chunks} <= {
                c.pk for c in Chunk.objects.filter(document=mine)
            }
            assert not {chunk.chunk_id for chunk in found.chunks} & theirs
    client = client_with_key(make_key(tenant, scopes=["documents"])[1])
    response = client.post("/api/v1/documents/search", {"query": "our refund rules", "k": 10}, format="json")
    assert response.status_code == 200
    assert [r["document_id"] for r in response.json()["results"]] == [str(mine.pk)]


def test_search_endpoint_shows_scores_and_refuses_bad_input(tenant, make_key):
    ids = ingest_corpus(tenant)
    client = client_with_key(make_key(tenant, scopes=["documents"])[1])
    response = client.post(
        "/api/v1/documents/search", {"query": "How often is the ficus watered?"}, format="json"
    )
    results = response.json()["results"]
    assert results[0]["document_id"] == ids["Office plants"]
    assert results[0]["score"] >= results[-1]["score"]
    assert {"title", "chunk_ordinal", "snippet", "text"} <= set(results[0])
    assert client.post("/api/v1/documents/search", {"query": "x", "k": 0}, format="json").status_code == 400
    assert client.post("/api/v1/documents/search", {}, format="json").status_code == 400


def clustered_vectors(rng: np.random.Generator, centers: np.ndarray, count: int) -> np.ndarray:
    picks = centers[rng.integers(0, len(centers), count)]
    vectors = picks + rng.normal(0, 0.35, (count, centers.shape[1]))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def add_chunks(tenant, vectors: np.ndarray) -> None:
    document = Document.objects.create(
        tenant=tenant,
        title="synthetic",
        content_type="text/plain",
        size_bytes=1,
        sha256=f"synthetic-{tenant.pk}-{len(vectors)}",
        content=b"x",
        status=DocumentStatus.READY,
        chunk_count=len(vectors),
    )
    Chunk.objects.bulk_create(
        [
            Chunk(tenant=tenant, document=document, ordinal=i, text=f"chunk {i}", token_count=2, embedding=v)
            for i, v in enumerate(vectors)
        ],
        batch_size=1000,
    )


def exact_top(tenant, query: np.ndarray, k: int) -> list[int]:
    rows = list(Chunk.objects.filter(tenant=tenant).values_list("id", "embedding"))
    scores = np.array([np.dot(query, np.asarray(embedding)) for _, embedding in rows])
    return [rows[i][0] for i in np.argsort(-scores, kind="stable")[:k]]


def plan_for(tenant_id: int, vector: np.ndarray) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN " + NEAREST_CHUNKS_SQL.format(tenant_id=int(tenant_id)),
            {"vector": vector_literal(vector), "k": 10},
        )
        return "\n".join(row[0] for row in cursor.fetchall())


def test_small_tenant_keeps_full_recall_among_a_large_corpus(tenant, settings):
    """The large tenant gets its own HNSW index; the small one is searched exactly. Both vectors share
    the same clusters, the case where a shared index filtered afterwards loses the small tenant."""
    settings.RAG_TENANT_INDEX_MIN_CHUNKS = 1000
    rng = np.random.default_rng(7)
    centers = rng.normal(0, 1, (40, 384))
    large = tenant_create(name="Large", actor="t")
    add_chunks(large, clustered_vectors(rng, centers, 3000))
    add_chunks(tenant, clustered_vectors(rng, centers, 25))
    assert vector_indexes_sync() == {large.pk: "created"}
    assert tenant_vector_indexes() == {large.pk: True}
    queries = clustered_vectors(rng, centers, 20).astype(np.float32)
    assert tenant_vector_index_name(large.pk) in plan_for(large.pk, queries[0])
    assert "hnsw" not in plan_for(tenant.pk, queries[0])  # exact: no index holds only its vectors
    small_hits = large_hits = 0
    for query in queries:
        small = [c.chunk_id for c in nearest_chunks(tenant_id=tenant.pk, vector=query, k=10)]
        small_hits += len(set(small) & set(exact_top(tenant, query, 10)))
        big = [c.chunk_id for c in nearest_chunks(tenant_id=large.pk, vector=query, k=10)]
        large_hits += len(set(big) & set(exact_top(large, query, 10)))
    assert small_hits / (10 * len(queries)) == 1.0
    assert large_hits / (10 * len(queries)) >= 0.95


def test_a_tenant_index_goes_when_the_tenant_shrinks(tenant, settings):
    settings.RAG_TENANT_INDEX_MIN_CHUNKS = 100
    rng = np.random.default_rng(1)
    add_chunks(tenant, clustered_vectors(rng, rng.normal(0, 1, (5, 384)), 120))
    assert tenant_vector_index_sync(tenant_id=tenant.pk) == "created"
    assert tenant_vector_index_sync(tenant_id=tenant.pk) == "kept"
    Chunk.objects.filter(tenant=tenant, ordinal__gte=60).delete()  # 60 left: above half the threshold
    assert tenant_vector_index_sync(tenant_id=tenant.pk) == "kept"
    Chunk.objects.filter(tenant=tenant, ordinal__gte=40).delete()
    assert tenant_vector_index_sync(tenant_id=tenant.pk) == "dropped"
    assert tenant_vector_indexes() == {}


def test_hashing_embedder_is_deterministic_normalised_and_lexical():
    embedder = HashingEmbedder(384)
    a, b, c, empty = embedder.embed(
        ["Refunds are paid within five days", "refund paid in five days", "The orchid likes light", "the of"]
    )
    assert np.allclose(embedder.embed(["Refunds are paid within five days"])[0], a)
    assert np.isclose(np.linalg.norm(a), 1.0)
    assert float(a @ b) > 0.5 > float(a @ c)
    assert not np.any(empty)  # stop words only: no features
    assert retrieve(tenant_id=1, query="the of and", k=3).chunks == []


def test_openai_embedder_asks_for_the_deployment_size(settings, openai_server):
    settings.EMBEDDING_BACKEND = "openai"
    vectors = get_embedder().embed(["first text", "second text"])
    assert vectors.shape == (2, 384)
    request = next(r for r in openai_server.requests if r["path"].endswith("/embeddings"))
    assert request["body"]["dimensions"] == 384
    assert request["body"]["model"] == "text-embedding-3-small"
    assert np.allclose(vectors, HashingEmbedder(384).embed(["first text", "second text"]), atol=1e-6)
    assert isinstance(get_embedder().client._client._transport, StdlibTransport)  # as the providers' SDKs


def test_repeated_query_embeddings_are_cached_in_process_and_in_redis(settings, openai_server):
    settings.EMBEDDING_BACKEND = "openai"

    def embedding_calls() -> int:
        return len([r for r in openai_server.requests if r["path"].endswith("/embeddings")])

    first, cached = embed_query("where is the fertilizer", tenant_id=1)
    assert (cached, embedding_calls()) == (False, 1)
    again, cached = embed_query("where is the fertilizer", tenant_id=1)
    assert (cached, embedding_calls()) == (True, 1)
    embeddings._query_vectors = embeddings._LocalLRU(10)  # another worker process: Redis still has it
    shared, cached = embed_query("where is the fertilizer", tenant_id=1)
    assert (cached, embedding_calls()) == (True, 1)
    assert np.allclose(first, again)
    assert np.allclose(first, shared)
    embed_query("where is the kettle", tenant_id=1)
    assert embedding_calls() == 2
    # Another tenant's identical question is not answered from the first tenant's entry (a fast
    # answer would tell it what someone else asked).
    _, cached = embed_query("where is the fertilizer", tenant_id=2)
    assert (cached, embedding_calls()) == (False, 3)


def test_minilm_refuses_another_vector_size():
    with pytest.raises(EmbeddingConfigurationError, match="384"):
        MiniLMEmbedder(256)


def test_unknown_backend_is_a_configuration_error(settings):
    settings.EMBEDDING_BACKEND = "word2vec"
    with pytest.raises(EmbeddingConfigurationError, match="hashing"):
        get_embedder()
