"""Retrieval recall and latency per tenant size, and ingestion throughput, in one run:

1. 200,000 chunks of 384 dimensions over tenants holding 0.1%, 1%, 10% and 50% of them (the rest
   spread over filler tenants). For each of the four tenants: recall@10 against exact search
   (computed here in numpy) and p50/p99 latency of `chat.retrieval.nearest_chunks` (the query chat
   runs), for
   - the naive baseline: one HNSW index shared by all tenants, the tenant as a filter;
   - our strategy: no shared index; exact search below RAG_TENANT_INDEX_MIN_CHUNKS, a per-tenant
     partial HNSW index above it (built by `vector_indexes_sync`, as the beat task does).
2. Ingestion throughput with the hashing embedder, end to end: documents created through
   `document_create` (the upload path), ingested by a real Celery worker (2 processes), until every
   document is ready.

Vectors are synthetic with the shape of real corpora: topics shared by all tenants (so a small
tenant's nearest neighbours in the whole table mostly belong to other tenants, the case a shared
index gets wrong), documents within a topic, chunks close to their document; questions are on one of
the tenant's topics.

    make bench B=bench/bench_retrieval.py      (runs in its own database, llm_backend_bench)
"""

from __future__ import annotations

import functools
import hashlib
import os
import statistics
import subprocess
import sys
import time
import uuid

import numpy as np
from harness import BASE_DIR, machine_line, setup_django, write_section

TOTAL_CHUNKS = int(os.environ.get("BENCH_CHUNKS", "200000"))
DIMENSIONS = 384
SHARES = [0.001, 0.01, 0.10, 0.50]
FILLER_TENANTS = 40
CHUNKS_PER_DOCUMENT = 20
TOPICS = 200
QUERIES = int(os.environ.get("BENCH_QUERIES", "200"))
K = 10
SHARED_INDEX = "chat_chunk_bench_shared_hnsw"
SLUG_PREFIX = "bench-rag-"
INGEST_DOCUMENTS = int(os.environ.get("BENCH_INGEST_DOCUMENTS", "200"))
INGEST_WORDS_PER_DOCUMENT = 4000
WORKER_PROCESSES = 2


def _noise(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Random directions of about unit length."""
    return rng.standard_normal((rows, DIMENSIONS)) / np.sqrt(DIMENSIONS)


def _normalise(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def tenant_sizes() -> list[tuple[str, int]]:
    sizes = [
        (f"{SLUG_PREFIX}{share * 100:g}pct".replace(".", "-"), int(TOTAL_CHUNKS * share)) for share in SHARES
    ]
    rest = TOTAL_CHUNKS - sum(size for _, size in sizes)
    sizes += [
        (f"{SLUG_PREFIX}filler-{index}", rest // FILLER_TENANTS + (1 if index < rest % FILLER_TENANTS else 0))
        for index in range(FILLER_TENANTS)
    ]
    return sizes


def generate(
    rng: np.random.Generator, size: int, topics: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the topic of each of its documents, chunk vectors, each chunk's topic number) for a tenant of
    `size` chunks: a document is at cosine ~0.7 from its topic, a chunk at ~0.85 from its document."""
    documents = -(-size // CHUNKS_PER_DOCUMENT)
    picks = rng.integers(0, len(topics), documents)
    document_topics = topics[picks]
    centres = _normalise(document_topics + 1.0 * _noise(rng, documents))
    owners = np.repeat(np.arange(documents), CHUNKS_PER_DOCUMENT)[:size]
    chunks = _normalise(centres[owners] + 0.62 * _noise(rng, size)).astype(np.float32)
    return document_topics, chunks, picks[owners]


# Chunk text for the keyword half of hybrid retrieval: words of the chunk's topic among common words
# (Zipf-distributed, so some are in most chunks, as "the" or "function" are in real ones).
COMMON_WORDS = 5000
TOPIC_WORDS = 40
TEXT_VERSION = b"text-v1"


@functools.lru_cache(maxsize=1)
def vocabulary(count: int) -> list[str]:
    rng = np.random.default_rng(1)
    syllables = ["ka", "lo", "mi", "ren", "to", "sa", "vel", "dor", "pi", "na", "gu", "zer", "ti", "bo"]
    found: dict[str, None] = {}
    while len(found) < count:
        found.setdefault("".join(rng.choice(syllables, int(rng.integers(3, 5)))), None)
    return list(found)


def chunk_texts(chunk_topics: np.ndarray, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = vocabulary(COMMON_WORDS + TOPICS * TOPIC_WORDS)
    common = rng.zipf(1.3, (len(chunk_topics), 60)) % COMMON_WORDS
    own = (
        COMMON_WORDS
        + chunk_topics[:, None] * TOPIC_WORDS
        + rng.integers(0, TOPIC_WORDS, (len(chunk_topics), 8))
    )
    return [" ".join(words[i] for i in row) for row in np.concatenate([common, own], axis=1)]


def question_text(rng: np.random.Generator, topic: int) -> str:
    words = vocabulary(COMMON_WORDS + TOPICS * TOPIC_WORDS)
    own = COMMON_WORDS + topic * TOPIC_WORDS + rng.integers(0, TOPIC_WORDS, 3)
    return " ".join([words[int(rng.zipf(1.3)) % COMMON_WORDS], *(words[i] for i in own)])


def load_corpus() -> dict[str, tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """slug -> (tenant id, chunk ids, chunk vectors, its documents' topics); (re)creates the bench tenants'
    chunks unless a previous run left exactly this corpus (the generator is seeded)."""
    from django.db import connection, transaction
    from pgvector.psycopg import register_vector

    from chat.embeddings import get_embedder
    from chat.models import Chunk, Document
    from tenants.models import Tenant
    from tenants.services import tenant_create

    rng = np.random.default_rng(20261124)
    topics = _normalise(rng.standard_normal((TOPICS, DIMENSIONS)))
    sizes = tenant_sizes()
    generated = {slug: generate(rng, size, topics) for slug, size in sizes}
    tenants = {
        slug: Tenant.objects.filter(slug=slug).first() or tenant_create(name=slug, slug=slug, actor="bench")
        for slug, _ in sizes
    }
    tenant_ids = [tenant.pk for tenant in tenants.values()]
    # Each tenant's corpus document carries the hash of its vectors: a previous run's identical corpus
    # is reused, anything else is replaced.
    fingerprints = {
        hashlib.sha256(chunks.tobytes() + TEXT_VERSION).hexdigest() for _, chunks, _ in generated.values()
    }
    stored = set(Document.objects.filter(tenant_id__in=tenant_ids).values_list("sha256", flat=True))
    existing = Chunk.objects.filter(tenant_id__in=tenant_ids).count()
    if existing != TOTAL_CHUNKS or stored != fingerprints:
        print(f"loading {TOTAL_CHUNKS:,} chunks ...", flush=True)
        started = time.perf_counter()
        drop_vector_indexes()  # loading through an HNSW index would be far slower
        with transaction.atomic():
            Document.objects.filter(tenant_id__in=tenant_ids).delete()
        for slug, (_, chunks, chunk_topics) in generated.items():
            tenant = tenants[slug]
            texts = chunk_texts(chunk_topics, tenant.pk)
            document = Document.objects.create(
                tenant=tenant,
                title=f"{slug} corpus",
                content_type="text/plain",
                size_bytes=0,
                sha256=hashlib.sha256(chunks.tobytes() + TEXT_VERSION).hexdigest(),
                content=b"",
                status="ready",
                # synthetic vectors, filed under the configured embedder so start-up checks pass
                embedder=get_embedder().name,
                chunk_count=len(chunks),
                chunks_embedded=len(chunks),
            )
            connection.ensure_connection()
            raw = connection.connection
            register_vector(raw)
            with (
                raw.cursor() as cursor,
                cursor.copy(
                    "COPY chat_chunk (tenant_id, document_id, ordinal, text, token_count, embedding,"
                    " metadata) FROM STDIN WITH (FORMAT BINARY)"
                ) as copy,
            ):
                copy.set_types(["int8", "uuid", "int4", "text", "int4", "vector", "jsonb"])
                for ordinal, vector in enumerate(chunks):
                    copy.write_row([tenant.pk, document.pk, ordinal, texts[ordinal], 300, vector, "{}"])
        print(f"loaded in {time.perf_counter() - started:.0f} s", flush=True)
        from chat.retrieval import text_search_index

        for tenant in tenants.values():
            text_search_index(tenant_id=tenant.pk)
        print(f"keyword index filled in {time.perf_counter() - started:.0f} s", flush=True)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE chat_chunk")
    corpus = {}
    for slug, (_, _, chunk_topics) in generated.items():
        DOCUMENT_TOPIC_NUMBERS[slug] = chunk_topics[::CHUNKS_PER_DOCUMENT]
    for slug, (document_topics, chunks, _) in generated.items():
        tenant_id = tenants[slug].pk
        ids = np.array(
            Chunk.objects.filter(tenant_id=tenant_id).order_by("ordinal").values_list("id", flat=True)
        )
        corpus[slug] = (tenant_id, ids, chunks, document_topics)
    return corpus


DOCUMENT_TOPIC_NUMBERS: dict[str, np.ndarray] = {}  # slug -> each document's topic number


def question_topic_numbers(document_topic_numbers: np.ndarray, count: int) -> list[int]:
    """The topic number of each of `questions`' questions (the same draws)."""
    rng = np.random.default_rng(len(document_topic_numbers))
    return [int(n) for n in document_topic_numbers[rng.integers(0, len(document_topic_numbers), count)]]


def questions(topics_of_tenant: np.ndarray, count: int) -> np.ndarray:
    """Questions on the tenant's topics, as far from a topic as its documents are: other tenants with
    documents on the topic have chunks as close to the question as the tenant's own."""
    rng = np.random.default_rng(len(topics_of_tenant))
    picked = topics_of_tenant[rng.integers(0, len(topics_of_tenant), count)]
    return _normalise(picked + 1.0 * _noise(rng, count)).astype(np.float32)


def exact_top_k(chunks: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> list[set[int]]:
    scores = queries.astype(np.float64) @ chunks.astype(np.float64).T
    best = np.argsort(-scores, axis=1)[:, :K]
    return [set(ids[row].tolist()) for row in best]


def plan_index(tenant_id: int, query: np.ndarray) -> str:
    """Which index the planner picks for this tenant's query (or 'exact scan')."""
    from django.db import connection

    from chat.retrieval import NEAREST_CHUNKS_SQL, vector_literal

    with connection.cursor() as cursor:
        cursor.execute(
            "EXPLAIN " + NEAREST_CHUNKS_SQL.format(tenant_id=tenant_id),
            {"vector": vector_literal(query), "k": K},
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    if SHARED_INDEX in plan:
        return "shared HNSW"
    if "chat_chunk_hnsw_tenant_" in plan:
        return "tenant's HNSW"
    return "exact (tenant b-tree + sort)"


def measure(tenant_id: int, queries: np.ndarray, truth: list[set[int]]) -> dict[str, float | str]:
    from chat.retrieval import nearest_chunks

    for query in queries[:20]:  # warm the buffers
        nearest_chunks(tenant_id=tenant_id, vector=query, k=K)
    latencies, recalls = [], []
    for query, expected in zip(queries, truth, strict=True):
        started = time.perf_counter()
        found = nearest_chunks(tenant_id=tenant_id, vector=query, k=K)
        latencies.append((time.perf_counter() - started) * 1000)
        recalls.append(len({chunk.chunk_id for chunk in found} & expected) / K)
    ordered = sorted(latencies)
    return {
        "recall": statistics.mean(recalls),
        "min_recall": min(recalls),
        "p50": statistics.median(latencies),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "plan": plan_index(tenant_id, queries[0]),
    }


def measure_hybrid(tenant_id: int, queries: np.ndarray, topic_numbers: list[int]) -> dict[str, float]:
    """Latency of hybrid retrieval after the question is embedded: both rankings (RAG_CANDIDATES
    each, as `retrieve` asks) and their fusion, for questions naming words of their topic."""
    from django.conf import settings

    from chat.retrieval import RetrievalPolicy, fuse, keyword_chunks, nearest_chunks

    rng = np.random.default_rng(tenant_id)
    texts = [question_text(rng, topic) for topic in topic_numbers]
    candidates = settings.RAG_CANDIDATES

    def run(vector: np.ndarray, text: str) -> int:
        semantic = nearest_chunks(tenant_id=tenant_id, vector=vector, k=candidates)
        lexical, _ = keyword_chunks(tenant_id=tenant_id, query=text, config="simple", k=candidates)
        return len(fuse(semantic, lexical, policy=RetrievalPolicy(), floor=0.3, min_coverage=0.5))

    for vector, text in list(zip(queries, texts, strict=True))[:20]:
        run(vector, text)
    latencies, keyword_hits = [], []
    for vector, text in zip(queries, texts, strict=True):
        started = time.perf_counter()
        keyword_hits.append(run(vector, text))
        latencies.append((time.perf_counter() - started) * 1000)
    ordered = sorted(latencies)
    return {
        "p50": statistics.median(latencies),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "found": statistics.mean(keyword_hits),
    }


def drop_vector_indexes() -> None:
    from django.db import connection

    from chat.retrieval import tenant_vector_index_name, tenant_vector_indexes

    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX IF EXISTS {SHARED_INDEX}")
        for tenant_id in tenant_vector_indexes():
            cursor.execute(f"DROP INDEX IF EXISTS {tenant_vector_index_name(tenant_id)}")


def build_shared_index() -> float:
    from django.conf import settings
    from django.db import connection

    from chat.retrieval import HNSW_INDEX_OPTIONS

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(f"SET maintenance_work_mem = '{settings.RAG_INDEX_BUILD_MEMORY}'")
        cursor.execute(
            f"CREATE INDEX {SHARED_INDEX} ON chat_chunk USING hnsw (embedding vector_cosine_ops) "
            f"WITH ({HNSW_INDEX_OPTIONS})"
        )
        cursor.execute("RESET maintenance_work_mem")
        cursor.execute("ANALYZE chat_chunk")
    return time.perf_counter() - started


def retrieval_section() -> tuple[str, dict[str, dict[str, dict[str, float | str]]]]:
    from django.conf import settings

    from chat.retrieval import HNSW_INDEX_OPTIONS, vector_indexes_sync

    corpus = load_corpus()
    measured_slugs = [slug for slug, _ in tenant_sizes()[: len(SHARES)]]
    workload = {}
    for slug in measured_slugs:
        tenant_id, ids, chunks, document_topics = corpus[slug]
        queries = questions(document_topics, QUERIES)
        workload[slug] = (tenant_id, queries, exact_top_k(chunks, ids, queries))

    drop_vector_indexes()
    print("building the shared HNSW index (baseline) ...", flush=True)
    shared_build = build_shared_index()
    results: dict[str, dict[str, dict[str, float | str]]] = {"baseline": {}, "ours": {}}
    for slug, (tenant_id, queries, truth) in workload.items():
        results["baseline"][slug] = measure(tenant_id, queries, truth)
        print("baseline", slug, results["baseline"][slug], flush=True)

    drop_vector_indexes()
    print("building per-tenant indexes (vector_indexes_sync) ...", flush=True)
    started = time.perf_counter()
    built = vector_indexes_sync()
    ours_build = time.perf_counter() - started
    for slug, (tenant_id, queries, truth) in workload.items():
        results["ours"][slug] = measure(tenant_id, queries, truth)
        print("ours", slug, results["ours"][slug], flush=True)
        topic_numbers = question_topic_numbers(DOCUMENT_TOPIC_NUMBERS[slug], len(queries))
        hybrid = measure_hybrid(tenant_id, queries, topic_numbers)
        results["ours"][slug].update({f"hybrid_{name}": value for name, value in hybrid.items()})
        print("hybrid", slug, hybrid, flush=True)

    rows = []
    for share, slug in zip(SHARES, measured_slugs, strict=True):
        size = len(corpus[slug][1])
        base, ours = results["baseline"][slug], results["ours"][slug]
        rows.append(
            f"| {share * 100:g}% ({size:,}) | {base['recall']:.3f} (min {base['min_recall']:.1f}) | "
            f"{base['p50']:.2f} / {base['p99']:.2f} | {base['plan']} "
            f"| {ours['recall']:.3f} (min {ours['min_recall']:.1f}) | "
            f"{ours['p50']:.2f} / {ours['p99']:.2f} | {ours['plan']} "
            f"| {ours['hybrid_p50']:.2f} / {ours['hybrid_p99']:.2f} |"
        )
    created = sum(1 for action in built.values() if action == "created")
    body = f"""
## Retrieval: recall@{K} and latency per tenant size (`bench/bench_retrieval.py`)

{machine_line()}; embedded PostgreSQL 16, pgvector 0.6 (no iterative index scans), same 2 cores;
{TOTAL_CHUNKS:,} chunks x {DIMENSIONS} dims in one table, {len(tenant_sizes())} tenants; synthetic vectors
({TOPICS} topics shared by all tenants, {CHUNKS_PER_DOCUMENT} chunks per document); {QUERIES} questions per
tenant on one of its topics; recall against exact search in numpy; latency of
`nearest_chunks` (the query chat runs, with the join for titles), one client, warm buffers.
HNSW indexes built WITH ({HNSW_INDEX_OPTIONS}), hnsw.ef_search={settings.RAG_HNSW_EF_SEARCH}; the
planner chooses between the tenant b-tree and a vector index as it would in production.

| tenant share (chunks) | baseline: recall@{K} | p50 / p99 ms | plan \
| ours: recall@{K} | p50 / p99 ms | plan | hybrid p50 / p99 ms |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Hybrid: what `retrieve` runs after embedding the question, both rankings of
RAG_CANDIDATES={settings.RAG_CANDIDATES} chunks (the keyword one over synthetic chunk text: words
of the chunk's topic among Zipf-distributed common words; questions name three topic words and a
common one) and their fusion. Recall is the mean over the questions, (min) the worst single
question. Targets: recall >= 0.95 and p50 <= 20 ms at every size (hybrid included).
Index builds: shared index over all
{TOTAL_CHUNKS:,} chunks {shared_build:.0f} s; ours ({created} tenant indexes at
RAG_TENANT_INDEX_MIN_CHUNKS={settings.RAG_TENANT_INDEX_MIN_CHUNKS:,}) {ours_build:.0f} s.
"""
    return body, results


# --- ingestion ------------------------------------------------------------------------------------------


def synthetic_text(rng: np.random.Generator, vocabulary: list[str], words: int) -> str:
    sentences, written = [], 0
    while written < words:
        length = int(rng.integers(8, 22))
        sentence = " ".join(vocabulary[i] for i in rng.zipf(1.3, length) % len(vocabulary))
        sentences.append(sentence.capitalize() + ".")
        written += length
    paragraphs = [" ".join(sentences[i : i + 6]) for i in range(0, len(sentences), 6)]
    return "\n\n".join(paragraphs)


def ingestion_section() -> str:
    from django.conf import settings
    from django.db import transaction

    from chat.documents import chunk_text, document_create
    from chat.embeddings import get_embedder
    from chat.models import Chunk, Document, DocumentStatus
    from tenants.models import Tenant
    from tenants.services import tenant_create

    slug = f"{SLUG_PREFIX}ingest"
    tenant = Tenant.objects.filter(slug=slug).first() or tenant_create(name=slug, slug=slug, actor="bench")
    with transaction.atomic():
        Document.objects.filter(tenant=tenant).delete()
    rng = np.random.default_rng(7)
    syllables = ["ka", "lo", "mi", "ner", "sto", "val", "qui", "dor", "pen", "tra", "zu", "bel", "or", "an"]
    vocabulary = sorted({"".join(rng.choice(syllables, int(rng.integers(2, 4)))) for _ in range(20000)})
    texts = [synthetic_text(rng, vocabulary, INGEST_WORDS_PER_DOCUMENT) for _ in range(INGEST_DOCUMENTS)]

    embedder = get_embedder()
    pieces = [
        piece.text
        for text in texts[:20]
        for piece in chunk_text(
            text, chunk_tokens=settings.RAG_CHUNK_TOKENS, overlap_tokens=settings.RAG_CHUNK_OVERLAP_TOKENS
        )
    ]
    started = time.perf_counter()
    embedder.embed(pieces)
    embed_rate = len(pieces) / (time.perf_counter() - started)

    env = {**os.environ, "DEBUG": "0", "SECRET_KEY": "bench-" + uuid.uuid4().hex}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "--concurrency",
            str(WORKER_PROCESSES),
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(3)  # worker boot is not ingestion
        started = time.perf_counter()
        for index, text in enumerate(texts):
            with transaction.atomic():  # each upload commits, which enqueues its ingestion
                document_create(
                    tenant=tenant,
                    title=f"Bench document {index}",
                    content=text.encode(),
                    filename=f"bench-{index}.txt",
                    content_type="text/plain",
                )
        enqueued = time.perf_counter() - started
        deadline = time.monotonic() + 900
        while Document.objects.filter(tenant=tenant).exclude(status=DocumentStatus.READY).exists():
            if Document.objects.filter(tenant=tenant, status=DocumentStatus.FAILED).exists():
                raise SystemExit("a bench document failed to ingest")
            if time.monotonic() > deadline:
                raise SystemExit("ingestion did not finish in 15 minutes")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        worker.terminate()
        worker.wait(60)
    chunks = Chunk.objects.filter(tenant=tenant).count()
    return f"""
### Ingestion throughput (hashing embedder, through Celery)

{INGEST_DOCUMENTS} plain-text documents of {INGEST_WORDS_PER_DOCUMENT:,} words uploaded through
`document_create` (upload: {enqueued:.1f} s), ingested by one Celery worker with {WORKER_PROCESSES}
processes on the same 2 cores as PostgreSQL: extraction, chunking ({settings.RAG_CHUNK_TOKENS} tokens,
{settings.RAG_CHUNK_OVERLAP_TOKENS} overlap), embedding, bulk insert.

| chunks | upload to all ready | chunks/second end to end | hashing embedder alone, one process |
|---|---|---|---|
| {chunks:,} | {elapsed:.1f} s | **{chunks / elapsed:,.0f}** | {embed_rate:,.0f} chunks/s |
"""


def main() -> None:
    setup_django()
    from django.conf import settings

    if settings.EMBEDDING_DIMENSIONS != DIMENSIONS:
        raise SystemExit(f"this bench needs EMBEDDING_DIMENSIONS={DIMENSIONS}")
    retrieval, _ = retrieval_section()
    ingestion = ingestion_section() if INGEST_DOCUMENTS else ""
    write_section("retrieval", retrieval + ingestion)
    print(retrieval + ingestion)


if __name__ == "__main__":
    main()
