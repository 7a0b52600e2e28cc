"""Start-up checks of the embedding configuration (run by `migrate`, and `make run` before serving).

One embedder and one vector size per deployment: a configured embedder that cannot run, a vector
column of another size, or documents embedded with another embedder are errors that name the fix
(`manage.py reembed`), instead of retrieval quietly comparing incomparable vectors.
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Tags, register
from django.db import connection

from chat.embeddings import EmbeddingConfigurationError, get_embedder

REEMBED_HINT = "Run `manage.py reembed` to re-embed every document with the configured embedder."


def vector_column_dimensions(table: str) -> int | None:
    """The size of `table.embedding` in the database, None before the table exists."""
    with connection.cursor() as cursor:
        cursor.execute(
            """SELECT a.atttypmod FROM pg_attribute a
                WHERE a.attrelid = to_regclass(%s) AND a.attname = 'embedding' AND NOT a.attisdropped""",
            [table],
        )
        row = cursor.fetchone()
    return int(row[0]) if row else None


@register()
def embedder_configured(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    try:
        get_embedder()
    except EmbeddingConfigurationError as exc:
        return [Error(str(exc), id="chat.E001")]
    return []


@register(Tags.database)
def embeddings_match_configuration(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    databases = kwargs.get("databases")
    if not databases or "default" not in databases:
        return []
    from chat.models import Document

    try:
        embedder = get_embedder()
    except EmbeddingConfigurationError:
        return []  # reported by embedder_configured
    found: list[CheckMessage] = []
    for table in ("chat_chunk", "chat_semanticcacheentry"):
        size = vector_column_dimensions(table)
        if size is not None and size != embedder.dimensions:
            found.append(
                Error(
                    f"{table}.embedding holds {size}-dimensional vectors but EMBEDDING_DIMENSIONS is "
                    f"{embedder.dimensions}.",
                    hint=REEMBED_HINT,
                    id="chat.E002",
                )
            )
    if not found and "chat_document" in connection.introspection.table_names():
        stale = Document.objects.exclude(embedder="").exclude(embedder=embedder.name).count()
        if stale:
            found.append(
                Error(
                    f"{stale} document(s) were embedded with another embedder than {embedder.name}.",
                    hint=REEMBED_HINT,
                    id="chat.E003",
                )
            )
    return found


@register()
def default_fallback_chain_valid(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """CHAT_DEFAULT_FALLBACK_CHAIN entries are provider:model: a typo would otherwise surface only at
    request time, as a 400 that reads like the client's fault."""
    from chat.services import default_chain, validate_target
    from tenants.errors import DomainError

    found: list[CheckMessage] = []
    for entry in default_chain():
        try:
            validate_target(entry)
        except DomainError as exc:
            found.append(Error(f"CHAT_DEFAULT_FALLBACK_CHAIN: {exc.message}", id="chat.E004"))
    return found
