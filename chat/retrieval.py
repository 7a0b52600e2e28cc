"""Top-k chunks of one tenant's documents by cosine distance, with full recall at every tenant size.

A single HNSW index shared by all tenants loses recall for small tenants: PostgreSQL walks the
index for the nearest vectors of *all* tenants and filters by tenant afterwards, so a tenant with
0.1% of the chunks sees almost none of its own among the candidates (pgvector 0.6 on the bundled
server has no iterative index scans). So there is no shared vector index:

- a tenant with fewer than RAG_TENANT_INDEX_MIN_CHUNKS chunks is searched exactly (its rows through
  the tenant_id b-tree, every distance computed): exact recall, a few milliseconds;
- a larger tenant gets its own HNSW index, a partial index `WHERE tenant_id = <id>` built in the
  background (`tenant_vector_index_sync`), which PostgreSQL picks for that tenant's queries: an
  index that holds only the tenant's vectors, so its recall does not depend on anyone else's data.

The query is the same for both; the planner chooses. bench/bench_retrieval.py measures recall@10
and latency of this against the shared-index baseline on 200,000 chunks.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection

from chat.embeddings import embed_query
from chat.models import Chunk

logger = logging.getLogger(__name__)

INDEX_PREFIX = "chat_chunk_hnsw_tenant_"
# pgvector's default ef_construction (64) built graphs in which a question now and then found none of
# its true neighbours on bench/bench_retrieval.py's corpus; 128 found them all, building ~1.6x slower.
HNSW_INDEX_OPTIONS = "m = 16, ef_construction = 128"


@dataclass(frozen=True)
class RetrievedChunk:
    chunk_id: int
    document_id: uuid.UUID
    title: str
    ordinal: int
    text: str
    score: float  # cosine similarity, 1 is identical

    def citation(self, snippet_chars: int = 240) -> dict[str, Any]:
        """What the client gets back in `citations`."""
        text = " ".join(self.text.split())
        if len(text) > snippet_chars:
            text = text[:snippet_chars].rsplit(" ", 1)[0] + "…"
        return {
            "document_id": str(self.document_id),
            "title": self.title,
            "chunk_ordinal": self.ordinal,
            "score": self.score,
            "snippet": text,
        }


@dataclass
class Retrieval:
    chunks: list[RetrievedChunk] = field(default_factory=list)
    embed_ms: float = 0.0
    query_ms: float = 0.0
    cached_embedding: bool = False


def vector_literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{value:.7g}" for value in vector.tolist()) + "]"


# The tenant id is written into the SQL as an integer literal (never user text): a partial index
# `WHERE tenant_id = 42` is only chosen when the planner sees the value itself.
NEAREST_CHUNKS_SQL = """
SELECT c.id, c.document_id, d.title, c.ordinal, c.text, c.distance
  FROM (SELECT id, document_id, ordinal, text, embedding <=> %(vector)s::vector AS distance
          FROM chat_chunk
         WHERE tenant_id = {tenant_id}
         ORDER BY embedding <=> %(vector)s::vector
         LIMIT %(k)s) AS c
  JOIN chat_document AS d ON d.id = c.document_id AND d.tenant_id = {tenant_id}
 ORDER BY c.distance
"""


def nearest_chunks(*, tenant_id: int, vector: np.ndarray, k: int) -> list[RetrievedChunk]:
    sql = NEAREST_CHUNKS_SQL.format(tenant_id=int(tenant_id))
    with connection.cursor() as cursor:
        cursor.execute(sql, {"vector": vector_literal(vector), "k": int(k)})
        rows = cursor.fetchall()
    return [
        RetrievedChunk(chunk_id, document_id, title, ordinal, text, round(1.0 - float(distance), 4))
        for chunk_id, document_id, title, ordinal, text, distance in rows
    ]


def retrieve(*, tenant_id: int, query: str, k: int, min_score: float | None = None) -> Retrieval:
    """The k chunks of this tenant closest to `query` with a score of at least `min_score`."""
    started = time.perf_counter()
    vector, cached = embed_query(query, tenant_id=tenant_id)
    embedded = time.perf_counter()
    retrieval = Retrieval(embed_ms=(embedded - started) * 1000, cached_embedding=cached)
    if not np.any(vector):  # no content words: nothing to compare (and cosine distance is undefined)
        return retrieval
    floor = settings.RAG_MIN_SCORE if min_score is None else min_score
    retrieval.chunks = [
        chunk for chunk in nearest_chunks(tenant_id=tenant_id, vector=vector, k=k) if chunk.score >= floor
    ]
    retrieval.query_ms = (time.perf_counter() - embedded) * 1000
    return retrieval


# --- per-tenant HNSW indexes --------------------------------------------------------------------------


def tenant_vector_index_name(tenant_id: int) -> str:
    return f"{INDEX_PREFIX}{int(tenant_id)}"


def tenant_vector_indexes() -> dict[int, bool]:
    """tenant id -> whether its index is valid (a failed concurrent build leaves an invalid one)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                WHERE c.relname LIKE %s""",
            [INDEX_PREFIX + "%"],
        )
        return {int(name.removeprefix(INDEX_PREFIX)): valid for name, valid in cursor.fetchall()}


def _run_ddl(statement: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement)


# pg_advisory_lock(INDEX_SYNC_LOCK, tenant id): one sync per tenant at a time, across workers.
INDEX_SYNC_LOCK = 0x5247  # "RG"


def tenant_vector_index_sync(*, tenant_id: int) -> str:
    """Builds the tenant's HNSW index once it has RAG_TENANT_INDEX_MIN_CHUNKS chunks; drops it when the
    tenant shrinks below half of that (so a tenant at the threshold does not flap). Returns what it did,
    or "busy" when another worker is syncing this tenant (its build shows as invalid until done, and
    must not be dropped as a failed one)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [INDEX_SYNC_LOCK, int(tenant_id)])
        (locked,) = cursor.fetchone()
    if not locked:
        return "busy"
    try:
        return _tenant_vector_index_sync(int(tenant_id))
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [INDEX_SYNC_LOCK, int(tenant_id)])


def _tenant_vector_index_sync(tenant_id: int) -> str:
    threshold = settings.RAG_TENANT_INDEX_MIN_CHUNKS
    chunks = Chunk.objects.filter(tenant_id=tenant_id).count()
    valid = tenant_vector_indexes().get(int(tenant_id))
    name = tenant_vector_index_name(tenant_id)
    # CONCURRENTLY keeps the tenant's reads and writes going while it builds; it cannot run inside a
    # transaction (tests run in one).
    concurrently = "" if connection.in_atomic_block else " CONCURRENTLY"
    if chunks >= threshold and valid is not True:
        if not concurrently:  # DDL refuses to run while deferred foreign-key checks are pending
            _run_ddl("SET CONSTRAINTS ALL IMMEDIATE")
        if valid is False:
            _run_ddl(f"DROP INDEX{concurrently} IF EXISTS {name}")
        started = time.perf_counter()
        _run_ddl(f"SET maintenance_work_mem = '{settings.RAG_INDEX_BUILD_MEMORY}'")
        try:
            _run_ddl(
                f"CREATE INDEX{concurrently} IF NOT EXISTS {name} ON chat_chunk "
                f"USING hnsw (embedding vector_cosine_ops) WITH ({HNSW_INDEX_OPTIONS}) "
                f"WHERE tenant_id = {int(tenant_id)}"
            )
        finally:
            _run_ddl("RESET maintenance_work_mem")
        # Fresh row counts: with stale ones the planner may think the tenant small and keep scanning.
        _run_ddl("ANALYZE chat_chunk")
        logger.info("built %s over %d chunks in %.1f s", name, chunks, time.perf_counter() - started)
        return "created"
    if valid is not None and chunks < threshold // 2:
        _run_ddl(f"DROP INDEX{concurrently} IF EXISTS {name}")
        return "dropped"
    return "kept" if valid else "none"


def vector_indexes_sync() -> dict[int, str]:
    """Every tenant's index brought in line with its size (beat runs it; ingestion triggers one tenant)."""
    threshold = settings.RAG_TENANT_INDEX_MIN_CHUNKS
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT tenant_id FROM chat_chunk GROUP BY tenant_id HAVING count(*) >= %s", [threshold]
        )
        large = {tenant_id for (tenant_id,) in cursor.fetchall()}
    return {
        tenant_id: tenant_vector_index_sync(tenant_id=tenant_id)
        for tenant_id in sorted(large | set(tenant_vector_indexes()))
    }
