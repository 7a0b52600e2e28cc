from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from tqdm import tqdm

from chat.checks import vector_column_dimensions
from chat.documents import document_fail, document_ingest
from chat.embeddings import EmbeddingConfigurationError, get_embedder
from chat.models import Chunk, Document, DocumentStatus, SemanticCacheEntry
from chat.retrieval import tenant_vector_index_name, tenant_vector_indexes, vector_indexes_sync
from tenants.models import Tenant


class Command(BaseCommand):
    help = (
        "Re-embed documents with the configured embedder (EMBEDDING_BACKEND, EMBEDDING_DIMENSIONS). "
        "When the vector size changed, the vector columns are resized first, which drops every chunk and "
        "semantic-cache entry: retrieval has nothing until the documents are re-embedded."
    )
    requires_system_checks: list[str] = []  # the checks send operators here; they must not stop it

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="Only this tenant's documents (not when the size changed).")
        parser.add_argument(
            "--all", action="store_true", help="Also documents already embedded with this embedder."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            embedder = get_embedder()
        except EmbeddingConfigurationError as exc:
            raise CommandError(str(exc)) from exc
        if vector_column_dimensions("chat_chunk") != embedder.dimensions:
            if options["tenant"]:
                raise CommandError(
                    "The vector size changed: every tenant must be re-embedded (drop --tenant)."
                )
            self.resize_vector_columns(embedder.dimensions)
        documents = Document.objects.defer("content").order_by("created_at")
        if options["tenant"]:
            tenant = Tenant.objects.filter(slug=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"No tenant with slug '{options['tenant']}'.")
            documents = documents.filter(tenant=tenant)
        if not options["all"]:
            documents = documents.exclude(embedder=embedder.name, status=DocumentStatus.READY)
        failed = 0
        for document in tqdm(list(documents), desc=f"re-embedding with {embedder.name}", file=self.stderr):
            try:
                result = document_ingest(document_id=document.pk, force=True)
            except Exception as exc:  # an embedding provider failing: record it, go on with the others
                result = document_fail(document_id=document.pk, reason=f"Embedding failed: {exc}")
            if result is not None and result.error:
                failed += 1
                self.stderr.write(f"{document.pk} ({document.title}): {result.error}")
        self.stdout.write(f"vector indexes: {vector_indexes_sync() or 'none needed'}")
        if failed:
            raise CommandError(f"{failed} document(s) failed; see their errors above and in the admin.")

    def resize_vector_columns(self, dimensions: int) -> None:
        self.stdout.write(f"resizing the vector columns to {dimensions} dimensions (chunks are dropped)")
        with transaction.atomic(), connection.cursor() as cursor:
            # ALTER TABLE refuses to run while deferred foreign-key checks are pending: run them now.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            for tenant_id in tenant_vector_indexes():
                cursor.execute(f"DROP INDEX IF EXISTS {tenant_vector_index_name(tenant_id)}")
            Chunk.objects.all().delete()
            SemanticCacheEntry.objects.all().delete()
            for table in ("chat_chunk", "chat_semanticcacheentry"):
                cursor.execute(f"ALTER TABLE {table} ALTER COLUMN embedding TYPE vector({int(dimensions)})")
            Document.objects.update(embedder="", chunks_embedded=0)
