"""The semantic cache: a tenant's earlier answer for a question that means the same.

Questions are embedded with the deployment's embedder; a new question reuses the answer of the
closest earlier one when their cosine similarity reaches the tenant's threshold and the model, the
prompt version and the instructions (the prompt as rendered with this request's variables, system
messages, max_tokens) are the same: an answer written for one end user's variables never reaches
another's. Entries expire (SEMANTIC_CACHE_TTL_SECONDS) and a tenant's entries are dropped whenever
its documents change, since answers may quote them; the instructions hash includes the documents'
stamp, so an answer finished after a change is never served. Each tenant's entries are searched
exactly (b-tree on tenant, model, prompt), so no other tenant's question can match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from django.conf import settings
from django.utils import timezone
from pgvector.django import CosineDistance

from chat.models import SemanticCacheEntry
from tenants.models import Tenant


@dataclass(frozen=True)
class SemanticKey:
    vector: np.ndarray
    model: str  # the provider:model the request is routed to first
    prompt_name: str
    prompt_version: int | None
    instructions_sha256: str


@dataclass(frozen=True)
class SemanticMatch:
    entry: SemanticCacheEntry | None  # the closest entry, hit or not
    similarity: float | None


def semantic_cache_lookup(*, tenant: Tenant, key: SemanticKey) -> SemanticMatch:
    closest = (
        SemanticCacheEntry.objects.filter(
            tenant=tenant,
            model=key.model,
            prompt_name=key.prompt_name,
            prompt_version=key.prompt_version,
            instructions_sha256=key.instructions_sha256,
            expires_at__gt=timezone.now(),
        )
        .annotate(distance=CosineDistance("embedding", key.vector))
        .order_by("distance")
        .first()
    )
    if closest is None or math.isnan(closest.distance):  # NaN: an entry without content words
        return SemanticMatch(None, None)
    return SemanticMatch(closest, round(1.0 - float(closest.distance), 4))


def semantic_cache_store(
    *, tenant: Tenant, key: SemanticKey, question: str, hit: dict[str, Any]
) -> SemanticCacheEntry:
    return SemanticCacheEntry.objects.create(
        tenant=tenant,
        embedding=key.vector,
        question=question,
        model=key.model,
        prompt_name=key.prompt_name,
        prompt_version=key.prompt_version,
        instructions_sha256=key.instructions_sha256,
        answer=hit["answer"],
        provider=hit["provider"],
        served_model=hit["model"],
        citations=hit["citations"],
        input_tokens=hit["input_tokens"],
        output_tokens=hit["output_tokens"],
        expires_at=timezone.now() + timedelta(seconds=settings.SEMANTIC_CACHE_TTL_SECONDS),
    )
