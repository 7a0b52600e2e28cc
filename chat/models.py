"""Conversations and their messages, each tenant's chat policy (fallback chain, routing, guards,
caches), and the tenant's documents for retrieval: Document -> Chunk (text + embedding)."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from pgvector.django import VectorField

from tenants.models import Tenant, TenantOwnedModel


class GuardPolicy(models.TextChoices):
    OFF = "off", "Off"
    FLAG = "flag", "Flag (record in the trace)"
    BLOCK = "block", "Block (400)"


class RedactionCategory(models.TextChoices):
    EMAIL = "email", "E-mail addresses"
    PHONE = "phone", "Phone numbers"
    CARD = "card", "Card numbers"
    SECRET = "secret", "API-key-like strings"


def all_redactions() -> list[str]:
    return list(RedactionCategory.values)


# PostgreSQL's built-in text search configurations (pg_ts_config in PostgreSQL 16).
_TEXT_SEARCH_CONFIGS = (
    "simple arabic armenian basque catalan danish dutch english finnish french german greek hindi "
    "hungarian indonesian irish italian lithuanian nepali norwegian portuguese romanian russian "
    "serbian spanish swedish tamil turkish yiddish"
)
TEXT_SEARCH_CONFIGS = _TEXT_SEARCH_CONFIGS.split()


class ChatSettings(models.Model):
    """How a tenant's chat requests are served. Created with defaults on first use."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="chat_settings")
    fallback_chain = ArrayField(
        models.CharField(max_length=120),
        default=list,
        blank=True,
        help_text="Ordered provider:model entries, e.g. openai:gpt-4o-mini,anthropic:claude-haiku-4-5,"
        "local:local. "
        "Empty: the deployment default (CHAT_DEFAULT_FALLBACK_CHAIN).",
    )
    routing_enabled = models.BooleanField(default=False, help_text="Send simple requests to the cheap model.")
    routing_cheap_model = models.CharField(max_length=120, blank=True, help_text="provider:model")
    routing_max_chars = models.PositiveIntegerField(
        default=400, help_text="Only messages this short are simple."
    )
    routing_complex_keywords = ArrayField(
        models.CharField(max_length=50),
        default=list,
        blank=True,
        help_text="Words that mark a request as complex (e.g. analyze, code, prove); comma separated.",
    )
    cache_enabled = models.BooleanField(
        default=True, help_text="Exact-match response cache (low temperature)."
    )
    cache_ttl_seconds = models.PositiveIntegerField(default=3600)
    max_input_chars = models.PositiveIntegerField(default=32_000)
    injection_policy = models.CharField(max_length=8, choices=GuardPolicy.choices, default=GuardPolicy.FLAG)
    redact_output = ArrayField(
        models.CharField(max_length=10, choices=RedactionCategory.choices), default=all_redactions, blank=True
    )
    rag_enabled = models.BooleanField(
        default=True,
        help_text="Answer from the tenant's documents when it has some (a request may still say rag=false).",
    )
    rag_text_search_config = models.CharField(
        max_length=20,
        choices=[(name, name) for name in TEXT_SEARCH_CONFIGS],
        default="simple",
        help_text="PostgreSQL text search configuration of the keyword half of retrieval. 'simple' "
        "(lower-cased words, no stemming, no stop words) works for documents in any language; a "
        "language's own (english, indonesian, ...) stems words of that language. Changing it "
        "re-indexes the tenant's chunks.",
    )
    rag_semantic_weight = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(10.0)],
        help_text="Weight of the embedding ranking in the fused ranking (0: keywords only).",
    )
    rag_lexical_weight = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(10.0)],
        help_text="Weight of the keyword (full-text) ranking in the fused ranking (0: embeddings only).",
    )
    semantic_cache_enabled = models.BooleanField(
        default=False,
        help_text="Answer a question close enough to an earlier one (same model and prompt version) "
        "with the earlier answer, at no cost. Low-temperature requests only, like the exact cache.",
    )
    semantic_cache_threshold = models.FloatField(
        default=0.95,
        validators=[MinValueValidator(0.5), MaxValueValidator(1.0)],
        help_text="Cosine similarity a new question needs to reuse an answer.",
    )
    semantic_cache_multi_turn = models.BooleanField(
        default=False,
        help_text="Also use the semantic cache inside multi-turn conversations (the earlier turns are "
        "not compared, so this is off by default).",
    )

    class Meta:
        verbose_name_plural = "chat settings"
        # Beyond the model permissions: the admin's circuit breaker page shows every provider's state.
        permissions = [("view_circuits", "Can view the provider circuit breakers")]

    def __str__(self) -> str:
        return f"chat settings of {self.tenant}"


class Conversation(TenantOwnedModel):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    end_user = models.CharField(max_length=200, blank=True)
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["tenant", "-updated_at"], name="conversation_tenant_recent")]

    def __str__(self) -> str:
        return self.title or str(self.id)


class Message(models.Model):
    # The database cascades too (migration 0005): a turn stored while Django collects a deleted
    # conversation's messages goes with it. Altering this field would drop that; see the migration.
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    role = models.CharField(max_length=10)
    content = models.TextField()
    tokens = models.PositiveIntegerField(default=0)
    request_id = models.CharField(max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["conversation", "created_at", "id"]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"


class DocumentStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    PROCESSING = "processing", "Processing"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


class Document(TenantOwnedModel):
    """An uploaded source. Its bytes are kept so it can be ingested again (new embedder, new chunking)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    title = models.CharField(max_length=300)
    source_filename = models.CharField(max_length=255, blank=True)
    content_type = models.CharField(max_length=100)
    size_bytes = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    content = models.BinaryField(editable=False)
    status = models.CharField(max_length=12, choices=DocumentStatus.choices, default=DocumentStatus.PENDING)
    error = models.TextField(blank=True)
    embedder = models.CharField(max_length=120, blank=True, help_text="What the chunks were embedded with.")
    chunk_count = models.PositiveIntegerField(default=0)
    chunks_embedded = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    ingested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # Identical content is one document per tenant (re-uploads are answered with it).
            models.UniqueConstraint(fields=["tenant", "sha256"], name="document_unique_content_per_tenant"),
        ]
        indexes = [models.Index(fields=["tenant", "status", "-created_at"], name="document_tenant_status")]
        # Searching as a tenant shows its chunks' text, which viewing the document list does not.
        permissions = [("search_as_tenant", "Can search documents as a tenant")]

    def __str__(self) -> str:
        return self.title

    @property
    def progress(self) -> float:
        if self.status == DocumentStatus.READY:
            return 1.0
        return self.chunks_embedded / self.chunk_count if self.chunk_count else 0.0


class Chunk(TenantOwnedModel):
    """A piece of a document with its embedding and its words (`search_vector`, a tsvector made with
    the tenant's text search configuration). No shared vector index: small tenants are searched
    exactly, large ones through their own partial HNSW index (chat/retrieval.py)."""

    id = models.BigAutoField(primary_key=True)
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    ordinal = models.PositiveIntegerField()
    text = models.TextField()
    token_count = models.PositiveIntegerField()
    embedding = VectorField(dimensions=settings.EMBEDDING_DIMENSIONS)
    metadata = models.JSONField(default=dict, blank=True)
    # Filled by the database with the tenant's configuration (chat/retrieval.py, text_search_index),
    # not a generated column: a generated column needs one configuration for every row.
    search_vector = SearchVectorField(null=True, editable=False)

    class Meta:
        ordering = ["document", "ordinal"]
        constraints = [
            models.UniqueConstraint(fields=["document", "ordinal"], name="chunk_unique_ordinal"),
        ]
        indexes = [GinIndex(fields=["search_vector"], name="chunk_search_vector")]

    def __str__(self) -> str:
        return f"{self.document_id} #{self.ordinal}"


class SemanticCacheEntry(TenantOwnedModel):
    """An answer kept for questions that mean the same (cosine similarity over question embeddings)."""

    id = models.BigAutoField(primary_key=True)
    embedding = VectorField(dimensions=settings.EMBEDDING_DIMENSIONS)
    question = models.TextField()
    model = models.CharField(max_length=120, help_text="The provider:model the request was routed to first.")
    prompt_name = models.CharField(max_length=100, blank=True)
    prompt_version = models.PositiveIntegerField(null=True, blank=True)
    instructions_sha256 = models.CharField(
        max_length=64,
        blank=True,
        help_text="Hash of what shapes the answer besides the question: the rendered prompt (variables "
        "included), system messages and max_tokens.",
    )
    answer = models.TextField()
    provider = models.CharField(max_length=40)
    served_model = models.CharField(max_length=120)
    citations = models.JSONField(default=list, blank=True)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(
                fields=["tenant", "model", "prompt_name", "expires_at"], name="semantic_cache_lookup"
            ),
        ]

    def __str__(self) -> str:
        return self.question[:60]
