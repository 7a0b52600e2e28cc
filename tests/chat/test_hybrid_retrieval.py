"""Hybrid retrieval: keyword and embedding rankings fused, evidence required, snippets of the passage
that matched, the keyword index per tenant and kept in step with re-embedding and its configuration."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pytest
from django.core.management import call_command
from django.db import connection

from chat import embeddings
from chat.documents import document_create, document_ingest
from chat.embeddings import normalise_rows, words
from chat.models import Chunk
from chat.retrieval import enough_terms_query, keyword_chunks, query_terms, retrieve, semantic_floor
from chat.services import chat_settings_update
from tests.chat.corpus import DOCUMENTS


def ingest(tenant, title: str, text: str):
    document, _ = document_create(
        tenant=tenant, content=text.encode(), content_type="text/plain", title=title, enqueue=False
    )
    return document_ingest(document_id=document.pk)


class ConceptEmbedder:
    """Knows synonyms, as a real semantic embedder does: words of one concept share a dimension, other
    words get their own (hashed). A chunk can then match a question by meaning without its words."""

    expensive = False
    CONCEPTS = {"car": 0, "automobil": 0, "vehicle": 0, "leave": 1, "park": 1}  # stems, as words() cuts them

    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions
        self.name = f"concepts-{dimensions}"

    def embed(self, texts: Sequence[str], *, interactive: bool = False) -> np.ndarray:
        matrix = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in words(text):
                slot = self.CONCEPTS.get(word, 10 + embeddings._feature_slot(word, self.dimensions - 10)[0])
                matrix[row, slot] += 1.0
        return normalise_rows(matrix)


@pytest.fixture
def concept_embedder(settings, monkeypatch):
    monkeypatch.setitem(embeddings.BACKENDS, "concepts", ConceptEmbedder)
    settings.EMBEDDING_BACKEND = "concepts"
    embeddings._embedder.cache_clear()
    yield
    embeddings._embedder.cache_clear()


SEMANTIC_ONLY = "Automobiles are parked."
LEXICAL_ONLY = (
    "Every car needs a leave permit: form XK-12, signed at reception by the security staff on duty, "
    "renewed each quarter, kept behind the windscreen, shown at the barrier on request, and returned "
    "when the contract ends."
)
UNRELATED = "Lunch is served at noon in the canteen on the second floor."


def test_fusion_retrieves_a_keyword_only_and_a_meaning_only_match(tenant, concept_embedder, settings):
    settings.RAG_MIN_SCORE = 0.9
    meaning = ingest(tenant, "Basement", SEMANTIC_ONLY)
    keywords = ingest(tenant, "Permits", LEXICAL_ONLY)
    ingest(tenant, "Canteen", UNRELATED)
    question = "Where do I leave the car?"

    found = retrieve(tenant_id=tenant.pk, query=question, k=5)
    by_document = {chunk.document_id: chunk for chunk in found.chunks}
    assert set(by_document) == {meaning.pk, keywords.pk}
    # The meaning-only match: similar embeddings, none of the question's words.
    assert by_document[meaning.pk].similarity >= 0.9
    assert by_document[meaning.pk].keyword_coverage == 0
    # The keyword-only match: every content word of the question, embeddings too far apart.
    assert by_document[keywords.pk].similarity < 0.9
    assert by_document[keywords.pk].keyword_coverage == 1.0

    vector_only = retrieve(tenant_id=tenant.pk, query=question, k=5, hybrid=False)
    assert [chunk.document_id for chunk in vector_only.chunks] == [meaning.pk]


def test_a_tenants_weights_can_turn_either_ranking_off(tenant, concept_embedder, settings):
    settings.RAG_MIN_SCORE = 0.9
    meaning = ingest(tenant, "Basement", SEMANTIC_ONLY)
    keywords = ingest(tenant, "Permits", LEXICAL_ONLY)
    question = "Where do I leave the car?"
    chat_settings_update(tenant=tenant, actor="t", rag_semantic_weight=0.0)
    assert [c.document_id for c in retrieve(tenant_id=tenant.pk, query=question, k=5).chunks] == [keywords.pk]
    chat_settings_update(tenant=tenant, actor="t", rag_semantic_weight=1.0, rag_lexical_weight=0.0)
    assert [c.document_id for c in retrieve(tenant_id=tenant.pk, query=question, k=5).chunks] == [meaning.pk]


def test_a_question_without_evidence_retrieves_nothing(tenant):
    for title, text in DOCUMENTS.items():
        ingest(tenant, title, text)
    for nonsense in ["xyzzy plugh", "What is the airspeed velocity of an unladen swallow?", "?!"]:
        assert retrieve(tenant_id=tenant.pk, query=nonsense, k=5).chunks == [], nonsense


def test_chat_answers_a_question_without_evidence_without_citations(
    tenant, chat_client, docs_client, settings
):
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = ["local:local"]
    for title, text in DOCUMENTS.items():
        ingest(tenant, title, text)
    response = chat_client.post("/api/v1/chat", {"message": "xyzzy plugh"}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["citations"] == []
    assert not response.json()["answer"].startswith("From your documents:")
    search = docs_client.post("/api/v1/documents/search", {"query": "xyzzy plugh"}, format="json")
    assert search.status_code == 200
    assert search.json()["results"] == []


LONG_DOCUMENT = (
    "The office opens at eight. Visitors sign in at the front desk and wear a badge. "
    "Coffee is free for everyone in the kitchen on each floor. Printers are on the east side. "
    "Meeting rooms are booked through the calendar, at most two hours at a time. "
    "The fire assembly point is the car park across the street, next to the bakery. "
    "Bicycles go in the racks by the north entrance."
)


def test_snippets_show_the_passage_holding_the_questions_words(tenant, docs_client):
    document = ingest(tenant, "Office guide", LONG_DOCUMENT)
    found = retrieve(tenant_id=tenant.pk, query="Where is the fire assembly point?", k=3)
    assert [chunk.document_id for chunk in found.chunks] == [document.pk]
    snippet = found.chunks[0].citation()["snippet"]
    assert "fire assembly point" in snippet
    assert not snippet.startswith("The office opens")  # not the chunk's first words
    assert len(snippet) <= 241
    response = docs_client.post(
        "/api/v1/documents/search", {"query": "where do bicycles go", "k": 3}, format="json"
    )
    assert "Bicycles go in the racks" in response.json()["results"][0]["snippet"]


def test_keyword_search_never_crosses_tenants(tenant, other_tenant, docs_client):
    ingest(other_tenant, "Their guide", LONG_DOCUMENT)
    mine = ingest(tenant, "Our guide", "Our printers are in room 4. Staplers are in the drawer.")
    theirs = set(Chunk.objects.filter(tenant=other_tenant).values_list("id", flat=True))
    # Only the other tenant's chunks hold these words.
    for question in ["fire assembly point", "bicycles racks north entrance", "printers"]:
        chunks, _ = keyword_chunks(tenant_id=tenant.pk, query=question, config="simple", k=50)
        assert not {chunk.chunk_id for chunk in chunks} & theirs
        found = retrieve(tenant_id=tenant.pk, query=question, k=50)
        assert {chunk.document_id for chunk in found.chunks} <= {mine.pk}
    response = docs_client.post("/api/v1/documents/search", {"query": "bicycles", "k": 50}, format="json")
    assert response.json()["results"] == []


def search_vectors_consistent(tenant_id: int, config: str) -> bool:
    """Every chunk of the tenant indexed, with the configuration given, title and text."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT count(*) FROM chat_chunk AS c JOIN chat_document AS d ON d.id = c.document_id
                WHERE c.tenant_id = %s AND (c.search_vector IS NULL OR
                      c.search_vector <> to_tsvector(%s::regconfig, d.title || E'\\n' || c.text))""",
            [tenant_id, config],
        )
        (wrong,) = cursor.fetchone()
    return wrong == 0 and Chunk.objects.filter(tenant_id=tenant_id).exists()


def test_reembedding_after_an_embedder_change_keeps_the_keyword_index(tenant, settings, monkeypatch):
    for title, text in DOCUMENTS.items():
        ingest(tenant, title, text)
    before = set(Chunk.objects.filter(tenant=tenant).values_list("id", flat=True))
    monkeypatch.setitem(embeddings.BACKENDS, "concepts", ConceptEmbedder)
    settings.EMBEDDING_BACKEND = "concepts"
    embeddings._embedder.cache_clear()
    try:
        call_command("reembed", stdout=io.StringIO(), stderr=io.StringIO())
        after = set(Chunk.objects.filter(tenant=tenant).values_list("id", flat=True))
        assert after
        assert not after & before  # new chunks, embedded anew
        assert search_vectors_consistent(tenant.pk, "simple")
        found = retrieve(tenant_id=tenant.pk, query="descaling espresso machine", k=3)
        assert found.chunks[0].title == "Espresso machine"
        assert found.chunks[0].keyword_coverage > 0
    finally:
        embeddings._embedder.cache_clear()


def test_a_new_text_search_configuration_reindexes_the_tenants_chunks(tenant, other_tenant):
    ingest(tenant, "Plants", "The ficus is watered on Mondays.")
    ingest(other_tenant, "Plants", "The ficus is watered on Mondays.")
    assert search_vectors_consistent(tenant.pk, "simple")
    chat_settings_update(tenant=tenant, actor="t", rag_text_search_config="english")
    assert search_vectors_consistent(tenant.pk, "english")
    assert search_vectors_consistent(other_tenant.pk, "simple")  # another tenant's index is left alone
    # English stems both sides: "waters" finds "watered" (simple would need the prefix "water:*").
    chunks, searchable = keyword_chunks(tenant_id=tenant.pk, query="waters", config="english", k=5)
    assert searchable == 1
    assert len(chunks) == 1
    # A document ingested now is indexed with the tenant's new configuration.
    ingest(tenant, "Kitchen", "The dishwasher runs nightly.")
    assert search_vectors_consistent(tenant.pk, "english")


def test_question_words_leave_out_what_says_nothing_about_the_subject():
    assert query_terms("How do I roll back a deployment?") == ["roll", "back", "deployment"]
    assert query_terms("Bagaimana cara menyimpan model di MLflow?") == ["menyimpan", "model", "mlflow"]


def test_the_semantic_floor_is_the_embedders_unless_set(settings):
    settings.RAG_MIN_SCORE = None
    assert semantic_floor() == settings.RAG_MIN_SCORE_DEFAULTS["hashing"]
    settings.RAG_MIN_SCORE = 0.12
    assert semantic_floor() == 0.12


def test_the_keyword_query_asks_for_enough_of_the_words(tenant):
    assert enough_terms_query(["a", "b", "c"], 2) == "(a & b) | (a & c) | (b & c)"
    ingest(tenant, "Garden", "The ficus is watered weekly. Cacti are watered monthly.")
    ingest(tenant, "Kitchen", "The ficus pot is blue.")
    # Four content words, two needed: only the garden holds two (ficus, watered).
    chunks, searchable = keyword_chunks(
        tenant_id=tenant.pk, query="When is the ficus watered, indoors or outdoors?", config="simple", k=5
    )
    assert searchable == 4
    assert [chunk.title for chunk in chunks] == ["Garden"]
    assert chunks[0].keyword_coverage == 0.5
