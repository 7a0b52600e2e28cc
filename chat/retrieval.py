"""Top-k chunks of one tenant's documents for a question: hybrid retrieval (embeddings and keywords,
fused), with evidence required and snippets that show the passage that matched.

Two rankings of the tenant's chunks, each over RAG_CANDIDATES candidates:

- by embedding (cosine distance). A single HNSW index shared by all tenants loses recall for small
  tenants: PostgreSQL walks the index for the nearest vectors of *all* tenants and filters by tenant
  afterwards, so a tenant with 0.1% of the chunks sees almost none of its own among the candidates
  (pgvector 0.6 on the bundled server has no iterative index scans). So there is no shared vector
  index: a tenant with fewer than RAG_TENANT_INDEX_MIN_CHUNKS chunks is searched exactly (its rows
  through the tenant_id b-tree, every distance computed); a larger tenant gets its own HNSW index, a
  partial index `WHERE tenant_id = <id>` built in the background (`tenant_vector_index_sync`), which
  PostgreSQL picks for that tenant's queries. bench/bench_retrieval.py measures recall and latency.
- by keywords: PostgreSQL full-text search over `chat_chunk.search_vector` (GIN index), with the
  tenant's text search configuration (`simple` by default, right for mixed-language documents). A
  natural question rarely has all its words in one passage, and an OR of them matches most chunks:
  the query asks for chunks holding at least RAG_MIN_KEYWORD_COVERAGE of its content words (as stem
  prefixes), or a quoted phrase (`websearch_to_tsquery`). Chunks holding more of the words rank
  first, then by `ts_rank_cd`.

They are fused by weighted reciprocal rank fusion (weights per tenant in ChatSettings): a chunk's
score is sum(weight / (RAG_RRF_K + rank)) over the rankings it is in, scaled so that first in both
is 1. A chunk is kept only with evidence: a cosine similarity of at least the embedder's floor
(`semantic_floor`, calibrated in bench/bench_relevance.py), or at least RAG_MIN_KEYWORD_COVERAGE of
the question's content words. A question matching nothing retrieves nothing, and chat answers it
without citations rather than citing noise.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.conf import settings
from django.db import connection

from chat.embeddings import STOP_WORDS, WORD, embed_query, get_embedder, words
from chat.models import ChatSettings, Chunk

logger = logging.getLogger(__name__)

INDEX_PREFIX = "chat_chunk_hnsw_tenant_"
# pgvector's default ef_construction (64) built graphs in which a question now and then found none of
# its true neighbours on bench/bench_retrieval.py's corpus; 128 found them all, building ~1.6x slower.
HNSW_INDEX_OPTIONS = "m = 16, ef_construction = 128"

# Words of a question that say nothing about its subject, in the languages our tenants write (English,
# Indonesian): left out of the keyword query, where `simple` keeps every word, so that "how do I ..."
# does not match every chunk that says "how".
_QUERY_STOP_WORDS_TEXT = """
    about also any anything best does doing done get got just make many may might more most much must
    need should some something tell there use used using want way ways work
    ada adalah agar akan apa apakah atau bagaimana bila bisa cara dalam dan dari dengan di itu ini
    jika juga kami kapan ke kita mana mengapa oleh pada saja saya sebuah siapa tidak untuk yang
"""
QUERY_STOP_WORDS = STOP_WORDS | frozenset(_QUERY_STOP_WORDS_TEXT.split())
# A question's longest content words, at most this many, make its keyword query (longer words are
# rarer, so they say more; and the query's size grows with combinations of them, see keyword_chunks).
MAX_QUERY_TERMS = 8


def query_terms(query: str) -> list[str]:
    """The question's distinct content words, lower-cased, in order (its MAX_QUERY_TERMS longest)."""
    terms: dict[str, None] = {}
    for word in WORD.findall(query.lower()):
        if len(word) > 1 and word not in QUERY_STOP_WORDS and not word.startswith("_"):
            terms.setdefault(word, None)
    longest = set(sorted(terms, key=len, reverse=True)[:MAX_QUERY_TERMS])
    return [term for term in terms if term in longest]


def quoted_phrases(query: str) -> str:
    """websearch_to_tsquery input for the question's quoted phrases ("" when it has none)."""
    phrases = [f'"{phrase.strip()}"' for phrase in re.findall(r'"([^"]+)"', query) if phrase.strip()]
    return " or ".join(phrases)


def term_queries(terms: list[str]) -> list[str]:
    """One to_tsquery operand per content word: its stem as a prefix ("rolled" -> "roll:*", which
    finds "rollback" and "rolling"), since `simple` does not stem; short stems must match whole.
    Terms are \\w+ runs, which hold none of to_tsquery's operators."""
    operands = []
    for term in terms:
        stem = (words(term) or [term])[0]
        operands.append(f"{stem}:*" if len(stem) >= 4 else stem)
    return operands


def semantic_floor() -> float:
    """The cosine similarity below which an embedding match is no evidence: RAG_MIN_SCORE when set,
    else the calibrated default of the deployment's embedder (RAG_MIN_SCORE_DEFAULTS)."""
    if settings.RAG_MIN_SCORE is not None:
        return float(settings.RAG_MIN_SCORE)
    backend = get_embedder().name.split("-")[0].split(":")[0]
    return float(settings.RAG_MIN_SCORE_DEFAULTS.get(backend, 0.0))


SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")


def best_passage(text: str, terms: list[str], chars: int) -> str:
    """The sentences of `text` that hold most of the question's words (stemmed alike), about `chars`
    long: what a citation shows. The text's beginning when no sentence holds any."""
    wanted = set(words(" ".join(terms)))
    sentences = [(m.start(), m.end()) for m in SENTENCE.finditer(text) if m.group().strip()]
    if not sentences:
        return _shorten(text, chars)
    hits = [len(wanted & set(words(text[start:end]))) for start, end in sentences]
    best = max(range(len(sentences)), key=lambda i: (hits[i], -i))
    if hits[best] == 0:
        return _shorten(text, chars)
    first = last = best
    # Grow the passage by the neighbouring sentence with more of the words while it fits.
    while True:
        options = [i for i in (first - 1, last + 1) if 0 <= i < len(sentences)]
        options = [i for i in options if sentences[max(last, i)][1] - sentences[min(first, i)][0] <= chars]
        if not options:
            break
        pick = max(options, key=lambda i: (hits[i], -abs(i - best)))
        first, last = min(first, pick), max(last, pick)
    passage = _shorten(text[sentences[first][0] : sentences[last][1]], chars)
    prefix = "…" if sentences[first][0] > 0 else ""
    return prefix + passage


def _shorten(text: str, chars: int) -> str:
    text = " ".join(text.split())
    if len(text) > chars:
        text = text[:chars].rsplit(" ", 1)[0] + "…"
    return text


@dataclass(frozen=True)
class RetrievedChunk:
    chunk_id: int
    document_id: uuid.UUID
    title: str
    ordinal: int
    text: str
    score: float  # relevance: the fused rank score, 1 for first in every ranking (cosine in nearest_chunks)
    similarity: float = 0.0  # cosine similarity of the embeddings, 1 is identical
    keyword_coverage: float = 0.0  # share of the question's content words the chunk holds
    snippet: str = ""

    def citation(self, snippet_chars: int = 240) -> dict[str, Any]:
        """What the client gets back in `citations`."""
        return {
            "document_id": str(self.document_id),
            "title": self.title,
            "chunk_ordinal": self.ordinal,
            "score": self.score,
            "similarity": self.similarity,
            "keyword_coverage": self.keyword_coverage,
            "snippet": self.snippet or _shorten(self.text, snippet_chars),
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
        RetrievedChunk(
            chunk_id,
            document_id,
            title,
            ordinal,
            text,
            round(1.0 - float(distance), 4),
            similarity=round(1.0 - float(distance), 4),
        )
        for chunk_id, document_id, title, ordinal, text, distance in rows
    ]


# Chunks holding most of the question's words first, then by cover density. `matched` counts the
# words one at a time (to_tsquery applies the configuration: stemming, its stop words). A chunk's
# tsvector is stored out of line (TOAST); `hits` reads each matching one once into memory (the
# concatenation makes a new value) instead of once per word, which made the query ~5x slower; the
# words are counted by one expression (no subquery per row), and only the chunks holding the most
# words are ranked by cover density, the costly part. `tenant_id + 0` keeps the planner on the GIN
# index alone, the tenant filtered on its few matching rows: with the tenant's b-tree it either read
# every chunk of a small tenant out of TOAST, or AND-ed a bitmap of all of a large tenant's rows
# (EXPLAIN ANALYZE on bench_retrieval's corpus: 9.6 -> 5.1 ms and 29.9 -> 6.0 ms).
KEYWORD_CHUNKS_SQL = """
WITH question AS (
    SELECT websearch_to_tsquery(%(config)s::regconfig, %(phrases)s)
           || to_tsquery(%(config)s::regconfig, %(enough_terms)s) AS q,
           array(SELECT to_tsquery(%(config)s::regconfig, term) FROM unnest(%(terms)s::text[]) AS term)
               AS term_queries
), hits AS MATERIALIZED (
    SELECT id, search_vector || ''::tsvector AS words
      FROM chat_chunk, question
     WHERE tenant_id + 0 = {tenant_id} AND search_vector @@ question.q
), covering AS (
    SELECT hits.id, hits.words, {matched} AS matched
      FROM hits, question
     ORDER BY matched DESC, hits.id
     LIMIT 2 * %(k)s
), ranked AS (
    SELECT covering.id, covering.matched, ts_rank_cd(covering.words, question.q) AS rank
      FROM covering, question
     ORDER BY covering.matched DESC, rank DESC, covering.id
     LIMIT %(k)s
)
SELECT c.id, c.document_id, d.title, c.ordinal, c.text, ranked.matched
  FROM ranked
  JOIN chat_chunk AS c ON c.id = ranked.id AND c.tenant_id = {tenant_id}
  JOIN chat_document AS d ON d.id = c.document_id AND d.tenant_id = {tenant_id}
 ORDER BY ranked.matched DESC, ranked.rank DESC, c.id
"""

SEARCHABLE_TERMS_SQL = """
SELECT term FROM unnest(%(terms)s::text[]) WITH ORDINALITY AS t(term, position)
 WHERE numnode(to_tsquery(%(config)s::regconfig, term)) > 0
 ORDER BY position
"""


def enough_terms_query(operands: list[str], need: int) -> str:
    """to_tsquery text matching chunks that hold at least `need` of the operands: (a & b) | (a & c)
    | (b & c) for two of three. The GIN index then finds only chunks that can be evidence, where an
    OR of common words would hand most of a large tenant's chunks to the ranking."""
    return " | ".join(
        "(" + " & ".join(group) + ")" for group in itertools.combinations(operands, max(1, need))
    )


def keyword_chunks(*, tenant_id: int, query: str, config: str, k: int) -> tuple[list[RetrievedChunk], int]:
    """(chunks holding at least RAG_MIN_KEYWORD_COVERAGE of the question's words, best first; how
    many of its words the configuration searches). A chunk's keyword_coverage is the share of those
    words it holds."""
    terms = query_terms(query)
    if not terms:
        return [], 0
    with connection.cursor() as cursor:
        cursor.execute(SEARCHABLE_TERMS_SQL, {"terms": term_queries(terms), "config": config})
        operands = [term for (term,) in cursor.fetchall()]
        if not operands:
            return [], 0
        need = math.ceil(settings.RAG_MIN_KEYWORD_COVERAGE * len(operands) - 1e-9)
        params: dict[str, Any] = {
            "terms": operands,
            "config": config,
            "phrases": quoted_phrases(query),
            "enough_terms": enough_terms_query(operands, need),
            "k": int(k),
        }
        matched = " + ".join(
            f"(hits.words @@ question.term_queries[{index}])::int" for index in range(1, len(operands) + 1)
        )
        cursor.execute(KEYWORD_CHUNKS_SQL.format(tenant_id=int(tenant_id), matched=matched), params)
        rows = cursor.fetchall()
    return [
        RetrievedChunk(
            chunk_id,
            document_id,
            title,
            ordinal,
            text,
            0.0,
            keyword_coverage=round(min(1.0, matched / len(operands)), 4),
        )
        for chunk_id, document_id, title, ordinal, text, matched in rows
    ], len(operands)


@dataclass(frozen=True)
class RetrievalPolicy:
    text_search_config: str = "simple"
    semantic_weight: float = 1.0
    lexical_weight: float = 1.0


def retrieval_policy(*, tenant_id: int) -> RetrievalPolicy:
    """The tenant's knobs (ChatSettings), the defaults when it has none yet."""
    row = (
        ChatSettings.objects.filter(tenant_id=tenant_id)
        .values_list("rag_text_search_config", "rag_semantic_weight", "rag_lexical_weight")
        .first()
    )
    return RetrievalPolicy(*row) if row else RetrievalPolicy()


def fuse(
    semantic: list[RetrievedChunk],
    lexical: list[RetrievedChunk],
    *,
    policy: RetrievalPolicy,
    floor: float,
    min_coverage: float,
) -> list[RetrievedChunk]:
    """Weighted reciprocal rank fusion of both rankings, keeping only chunks with evidence."""
    rrf_k = settings.RAG_RRF_K
    best = (policy.semantic_weight + policy.lexical_weight) / (rrf_k + 1)
    scores: dict[int, float] = {}
    found: dict[int, RetrievedChunk] = {}
    evidence: set[int] = set()
    for weight, ranking in ((policy.semantic_weight, semantic), (policy.lexical_weight, lexical)):
        for rank, chunk in enumerate(ranking, start=1):
            scores[chunk.chunk_id] = scores.get(chunk.chunk_id, 0.0) + weight / (rrf_k + rank)
            earlier = found.get(chunk.chunk_id)
            found[chunk.chunk_id] = (
                chunk
                if earlier is None
                else RetrievedChunk(**{**earlier.__dict__, "keyword_coverage": chunk.keyword_coverage})
            )
            if (ranking is semantic and chunk.similarity >= floor) or (
                ranking is lexical and chunk.keyword_coverage >= min_coverage
            ):
                evidence.add(chunk.chunk_id)
    ranked = sorted(evidence, key=lambda chunk_id: (-scores[chunk_id], chunk_id))
    return [
        RetrievedChunk(**{**found[chunk_id].__dict__, "score": round(scores[chunk_id] / best, 4)})
        for chunk_id in ranked
    ]


SIMILARITY_SQL = """
SELECT id, 1 - (embedding <=> %(vector)s::vector) FROM chat_chunk
 WHERE tenant_id = {tenant_id} AND id = ANY(%(ids)s)
"""


def _with_similarity(
    chunks: list[RetrievedChunk], *, tenant_id: int, vector: np.ndarray | None
) -> list[RetrievedChunk]:
    """Keyword-only hits get their cosine similarity too (shown to the client, not ranked on)."""
    missing = [chunk.chunk_id for chunk in chunks if chunk.similarity == 0.0]
    if not missing or vector is None:
        return chunks
    with connection.cursor() as cursor:
        cursor.execute(
            SIMILARITY_SQL.format(tenant_id=int(tenant_id)),
            {"vector": vector_literal(vector), "ids": missing},
        )
        similarity = {chunk_id: round(float(value), 4) for chunk_id, value in cursor.fetchall()}
    return [
        RetrievedChunk(**{**chunk.__dict__, "similarity": similarity.get(chunk.chunk_id, chunk.similarity)})
        for chunk in chunks
    ]


def retrieve(
    *, tenant_id: int, query: str, k: int, min_score: float | None = None, hybrid: bool = True
) -> Retrieval:
    """The k most relevant chunks of this tenant for `query` that have evidence: a cosine similarity
    of at least `min_score` (default: the embedder's floor) or enough of the question's words.
    `hybrid=False` ranks by embeddings alone (the benchmark's baseline)."""
    started = time.perf_counter()
    policy = retrieval_policy(tenant_id=tenant_id)
    if not hybrid:
        policy = RetrievalPolicy(policy.text_search_config, 1.0, 0.0)
    retrieval = Retrieval()
    vector: np.ndarray | None = None
    if policy.semantic_weight > 0:
        vector, retrieval.cached_embedding = embed_query(query, tenant_id=tenant_id)
        if not np.any(vector):  # no content words: nothing to compare (cosine distance is undefined)
            vector = None
    embedded = time.perf_counter()
    retrieval.embed_ms = (embedded - started) * 1000
    candidates = max(settings.RAG_CANDIDATES, k)
    semantic = nearest_chunks(tenant_id=tenant_id, vector=vector, k=candidates) if vector is not None else []
    lexical: list[RetrievedChunk] = []
    if policy.lexical_weight > 0:
        lexical, _ = keyword_chunks(
            tenant_id=tenant_id, query=query, config=policy.text_search_config, k=candidates
        )
    floor = semantic_floor() if min_score is None else min_score
    fused = fuse(
        semantic, lexical, policy=policy, floor=floor, min_coverage=settings.RAG_MIN_KEYWORD_COVERAGE
    )
    terms = query_terms(query)
    retrieval.chunks = [
        RetrievedChunk(**{**chunk.__dict__, "snippet": best_passage(chunk.text, terms, SNIPPET_CHARS)})
        for chunk in _with_similarity(fused[:k], tenant_id=tenant_id, vector=vector)
    ]
    retrieval.query_ms = (time.perf_counter() - embedded) * 1000
    return retrieval


SNIPPET_CHARS = 240


# --- the keyword index ------------------------------------------------------------------------------

# The tenant's configuration is read by the statement itself, so that a chunk is always indexed with
# the configuration in force when it is written. The document's title is indexed with each chunk:
# a question often names the subject only the title does ("the deployment runbook").
TEXT_SEARCH_INDEX_SQL = """
UPDATE chat_chunk AS c SET search_vector = to_tsvector(config.name, d.title || E'\\n' || c.text)
  FROM chat_document AS d,
       (SELECT coalesce((SELECT rag_text_search_config FROM chat_chatsettings
                          WHERE tenant_id = %(tenant_id)s), 'simple')::regconfig AS name) AS config
 WHERE c.tenant_id = %(tenant_id)s AND d.id = c.document_id
"""


def text_search_index(*, tenant_id: int, document_id: uuid.UUID | None = None) -> int:
    """(Re)computes the tsvector of the tenant's chunks (one document's, when given) with its text
    search configuration: at ingestion, and for every chunk when the configuration changes."""
    sql = TEXT_SEARCH_INDEX_SQL + (" AND c.document_id = %(document_id)s" if document_id else "")
    with connection.cursor() as cursor:
        cursor.execute(sql, {"tenant_id": int(tenant_id), "document_id": document_id})
        return cursor.rowcount


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
