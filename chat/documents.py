"""A tenant's documents: upload checks, text extraction, chunking, and ingestion (embed + store).

Upload (`document_create`) checks what can be checked at once (size, type, encoding, a PDF's header),
keeps the bytes and enqueues ingestion on commit. Ingestion (`document_ingest`, run by the Celery
task and by `manage.py ingest`) extracts text, chunks it, embeds the chunks in batches outside any
transaction, then swaps the document's chunks in one transaction, their words indexed for keyword
search there too: running it twice leaves the same chunks, and a document deleted meanwhile is left
alone.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import PurePath

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from chat.embeddings import get_embedder
from chat.models import Chunk, Document, DocumentStatus, SemanticCacheEntry
from chat.retrieval import text_search_index
from chat.tokens import CHARS_PER_TOKEN, estimate_tokens
from tenants.caching import StampedLocalCache
from tenants.errors import ApiError, ConflictError, DomainError, NotFoundError
from tenants.models import Tenant

logger = logging.getLogger(__name__)

PDF = "application/pdf"
HTML = "text/html"
MARKDOWN = "text/markdown"
PLAIN = "text/plain"
SUPPORTED_TYPES = (PLAIN, MARKDOWN, HTML, PDF)
TYPE_ALIASES = {"text/x-markdown": MARKDOWN, "application/xhtml+xml": HTML, "application/x-pdf": PDF}
EXTENSION_TYPES = {
    ".txt": PLAIN,
    ".text": PLAIN,
    ".md": MARKDOWN,
    ".markdown": MARKDOWN,
    ".html": HTML,
    ".htm": HTML,
    ".pdf": PDF,
}
# Clients that do not know a file's type send these; the file name decides then.
UNSPECIFIC_TYPES = ("", "application/octet-stream", "binary/octet-stream")


class ExtractionError(Exception):
    """The document's bytes hold no usable text; the message says why (stored on the document)."""


# --- upload -------------------------------------------------------------------------------------------


def content_type_for(*, declared: str | None, filename: str) -> str:
    """The supported type of an upload from its declared type, else its file name; 415 otherwise."""
    declared_type = (declared or "").split(";")[0].strip().lower()
    declared_type = TYPE_ALIASES.get(declared_type, declared_type)
    if declared_type in SUPPORTED_TYPES:
        return declared_type
    by_name = EXTENSION_TYPES.get(PurePath(filename).suffix.lower()) if filename else None
    if by_name and (declared_type in UNSPECIFIC_TYPES or declared_type.startswith("text/")):
        return by_name
    raise ApiError(
        f"Unsupported document type {declared_type or 'unknown'!r}"
        + (f" for {filename!r}" if filename else "")
        + ": send text/plain, text/markdown, text/html or application/pdf (.txt, .md, .html, .pdf).",
        status_code=415,
        code="unsupported_document_type",
        param="file",
    )


def _check_upload(content: bytes, content_type: str) -> None:
    empty = DomainError("The document is empty.", param="file", code="empty_document")
    if not content.strip():
        raise empty
    if len(content) > settings.RAG_MAX_UPLOAD_BYTES:
        raise ApiError(
            f"The document is {len(content)} bytes; the limit is {settings.RAG_MAX_UPLOAD_BYTES}.",
            status_code=413,
            code="document_too_large",
            param="file",
        )
    if content_type == PDF:
        if not content.lstrip()[:5] == b"%PDF-":
            raise DomainError("The file is not a PDF (no %PDF- header).", param="file", code="invalid_pdf")
        return
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DomainError(
            f"Text documents must be UTF-8 (invalid byte at position {exc.start}).",
            param="file",
            code="invalid_encoding",
        ) from None
    if not text.strip():  # Unicode whitespace or a byte order mark only
        raise empty


def _title_for(title: str, filename: str, content: bytes, content_type: str) -> str:
    if title.strip():
        return title.strip()[:300]
    if filename:
        return PurePath(filename).stem[:300] or filename[:300]
    if content_type != PDF:
        lines = content.decode("utf-8-sig").strip().splitlines()
        return (lines[0].lstrip("# ").strip()[:80] if lines else "") or "Untitled"
    return "Untitled"


def document_create(
    *,
    tenant: Tenant,
    content: bytes,
    content_type: str,
    title: str = "",
    filename: str = "",
    enqueue: bool = True,
) -> tuple[Document, bool]:
    """(document, created). Identical content already uploaded by this tenant returns that document.
    The Celery task ingests it after commit, unless `enqueue` is False (`manage.py ingest` does it)."""
    _check_upload(content, content_type)
    digest = hashlib.sha256(content).hexdigest()
    existing = Document.objects.filter(tenant=tenant, sha256=digest).first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            document = Document.objects.create(
                tenant=tenant,
                title=_title_for(title, filename, content, content_type),
                source_filename=filename[:255],
                content_type=content_type,
                size_bytes=len(content),
                sha256=digest,
                content=content,
            )
            if enqueue:
                _enqueue_ingest(document)
    except IntegrityError:  # the same content uploaded concurrently: answer with the one that won
        return Document.objects.get(tenant=tenant, sha256=digest), False
    return document, True


def _enqueue_ingest(document: Document) -> None:
    """After commit. Should the broker be down, the document stays pending and is marked failed (so it
    can be ingested again) by `documents_fail_stalled`; the upload itself has succeeded."""
    from chat.tasks import document_ingest_task

    document_id = str(document.pk)
    transaction.on_commit(lambda: document_ingest_task.delay(document_id), robust=True)


def _locked_document(*, tenant: Tenant, document_id: uuid.UUID | str) -> Document:
    """The tenant's document, its row locked until the transaction ends (an ingestion storing its
    chunks holds the same lock), without its content."""
    document = (
        Document.objects.select_for_update().defer("content").filter(tenant=tenant, pk=document_id).first()
    )
    if document is None:
        raise NotFoundError("No such document.", param="id")
    return document


def document_reingest(*, tenant: Tenant, document_id: uuid.UUID | str) -> Document:
    """Ingest again (after a failure, or with a new embedder); refused while an ingestion is queued."""
    with transaction.atomic():
        document = _locked_document(tenant=tenant, document_id=document_id)
        if document.status in (DocumentStatus.PENDING, DocumentStatus.PROCESSING):
            raise ConflictError(
                f"The document is {document.status}; wait until it is ready or failed.",
                code="document_busy",
            )
        document.status = DocumentStatus.PENDING
        document.error = ""
        document.chunks_embedded = 0
        document.save(update_fields=["status", "error", "chunks_embedded", "updated_at"])
        _enqueue_ingest(document)
    return document


def document_delete(*, tenant: Tenant, document_id: uuid.UUID | str) -> None:
    """Removes the document and its chunks. The row lock waits for an ingestion storing its chunks."""
    with transaction.atomic():
        document = _locked_document(tenant=tenant, document_id=document_id)
        document.delete()  # chunks cascade
        tenant_documents_changed(tenant_id=tenant.pk)


STALLED_REASON = (
    "Ingestion stopped without finishing (the worker was lost or the queue unreachable); "
    "ingest it again to retry."
)


def documents_fail_stalled() -> int:
    """Documents pending or processing without progress for RAG_INGEST_STALLED_SECONDS (a worker killed
    mid-task, an enqueue lost) are marked failed, so the tenant can ingest them again. Returns how many.
    Should the lost task still run later, it ingests the document all the same."""
    cutoff = timezone.now() - timedelta(seconds=settings.RAG_INGEST_STALLED_SECONDS)
    stalled = Document.objects.filter(
        status__in=(DocumentStatus.PENDING, DocumentStatus.PROCESSING), updated_at__lt=cutoff
    )
    return stalled.update(status=DocumentStatus.FAILED, error=STALLED_REASON, updated_at=timezone.now())


# --- extraction ---------------------------------------------------------------------------------------


def _html_text(content: bytes) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(content.decode("utf-8-sig"), "html.parser")
    for element in soup(["script", "style", "noscript", "template", "head", "svg"]):
        element.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    body = soup.get_text("\n")
    return f"{title}\n\n{body}" if title else body


def _pdf_text(content: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(content))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ExtractionError("The PDF is encrypted with a password.")
        pages = [page.extract_text() or "" for page in reader.pages]
    except ExtractionError:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        raise ExtractionError(f"The PDF could not be read: {type(exc).__name__}: {exc}"[:500]) from exc
    return "\n\n".join(pages)


def extract_text(content: bytes, content_type: str) -> str:
    """Plain text of a document, whitespace tidied; ExtractionError when there is none."""
    if content_type == PDF:
        text = _pdf_text(content)
    elif content_type == HTML:
        text = _html_text(content)
    else:
        text = content.decode("utf-8-sig")
    text = text.replace("\x00", "").replace("\r\n", "\n")
    text = re.sub(r"[ \t\f\v]+", " ", text)
    text = re.sub(r"\n\s*\n\s*", "\n\n", text).strip()
    if not text:
        reason = "a scanned PDF needs OCR first" if content_type == PDF else "only markup or whitespace"
        raise ExtractionError(f"No text found in the document ({reason}).")
    return text


# --- chunking -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    text: str
    token_count: int
    start: int  # character offsets into the extracted text
    end: int


SENTENCE_OR_PARAGRAPH_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def _units(text: str, max_tokens: int) -> Iterator[tuple[int, int]]:
    """(start, end) of sentences and paragraphs; one longer than max_tokens is cut between words."""
    max_chars = max_tokens * CHARS_PER_TOKEN
    position = 0
    for separator in [*SENTENCE_OR_PARAGRAPH_END.finditer(text), None]:
        end = separator.start() if separator else len(text)
        if end > position:
            if end - position <= max_chars:
                yield position, end
            else:
                window_start = previous_word_end = position
                for word in re.finditer(r"\S+", text[position:end]):
                    word_start, word_end = position + word.start(), position + word.end()
                    if word_end - window_start > max_chars and word_start > window_start:
                        if previous_word_end > window_start:
                            yield window_start, previous_word_end
                        window_start = word_start
                    previous_word_end = word_end
                    while word_end - window_start > max_chars:  # one "word" longer than a chunk: cut it
                        yield window_start, window_start + max_chars
                        window_start += max_chars
                if end > window_start:
                    yield window_start, end
        position = separator.end() if separator else len(text)


def chunk_text(text: str, *, chunk_tokens: int, overlap_tokens: int) -> list[Piece]:
    """Consecutive pieces of about `chunk_tokens` tokens that end on sentence or paragraph ends where
    possible; each piece repeats the last sentences (up to `overlap_tokens`) of the one before."""
    units = list(_units(text, chunk_tokens))

    def tokens_between(first_unit: int, end: int) -> int:
        return estimate_tokens(text[units[first_unit][0] : end])

    pieces: list[Piece] = []
    first = 0
    while first < len(units):
        last = first
        while last + 1 < len(units) and tokens_between(first, units[last + 1][1]) <= chunk_tokens:
            last += 1
        start, end = units[first][0], units[last][1]
        piece_text = text[start:end]
        pieces.append(Piece(piece_text, estimate_tokens(piece_text), start, end))
        if last + 1 >= len(units):
            break
        next_first = last + 1
        while next_first - 1 > first and tokens_between(next_first - 1, end) <= overlap_tokens:
            next_first -= 1
        first = next_first
    return pieces


# --- ingestion ----------------------------------------------------------------------------------------

ProgressCallback = Callable[[int, int], None]  # (chunks embedded, chunks in total)


def document_ingest(
    *, document_id: uuid.UUID | str, force: bool = False, on_progress: ProgressCallback | None = None
) -> Document | None:
    """Extract, chunk, embed and store one document. Returns it (ready or failed), or None when it was
    deleted. Already ingested with the current embedder: nothing to do unless `force`.
    Embedding errors propagate (the task retries them); extraction errors mark the document failed."""
    document = Document.objects.filter(pk=document_id).first()
    if document is None:
        return None
    embedder = get_embedder()
    if document.status == DocumentStatus.READY and document.embedder == embedder.name and not force:
        return document
    Document.objects.filter(pk=document.pk).update(
        status=DocumentStatus.PROCESSING, error="", chunks_embedded=0, updated_at=timezone.now()
    )
    try:
        text = extract_text(bytes(document.content), document.content_type)
    except ExtractionError as exc:
        return document_fail(document_id=document.pk, reason=str(exc))
    pieces = chunk_text(
        text, chunk_tokens=settings.RAG_CHUNK_TOKENS, overlap_tokens=settings.RAG_CHUNK_OVERLAP_TOKENS
    )
    Document.objects.filter(pk=document.pk).update(chunk_count=len(pieces))
    vectors: list[np.ndarray] = []
    batch_size = settings.EMBEDDING_BATCH_SIZE
    for offset in range(0, len(pieces), batch_size):
        batch = pieces[offset : offset + batch_size]
        vectors.extend(embedder.embed([piece.text for piece in batch]))
        embedded = offset + len(batch)
        Document.objects.filter(pk=document.pk).update(chunks_embedded=embedded, updated_at=timezone.now())
        if on_progress is not None:
            on_progress(embedded, len(pieces))
    with transaction.atomic():
        locked = Document.objects.select_for_update().filter(pk=document.pk).first()
        if locked is None:
            return None
        Chunk.objects.filter(document=locked).delete()
        Chunk.objects.bulk_create(
            [
                Chunk(
                    tenant_id=locked.tenant_id,
                    document=locked,
                    ordinal=ordinal,
                    text=piece.text,
                    token_count=piece.token_count,
                    embedding=vector,
                    metadata={"start": piece.start, "end": piece.end},
                )
                for ordinal, (piece, vector) in enumerate(zip(pieces, vectors, strict=True))
            ],
            batch_size=1000,
        )
        text_search_index(tenant_id=locked.tenant_id, document_id=locked.pk)
        locked.status = DocumentStatus.READY
        locked.error = ""
        locked.embedder = embedder.name
        locked.chunk_count = locked.chunks_embedded = len(pieces)
        locked.ingested_at = timezone.now()
        locked.save()
        tenant_documents_changed(tenant_id=locked.tenant_id)
    return locked


def document_fail(*, document_id: uuid.UUID | str, reason: str) -> Document | None:
    Document.objects.filter(pk=document_id).update(
        status=DocumentStatus.FAILED, error=reason[:2000], updated_at=timezone.now()
    )
    logger.info("document %s failed to ingest: %s", document_id, reason)
    return Document.objects.filter(pk=document_id).first()


# --- what chat needs to know ----------------------------------------------------------------------

documents_cache: StampedLocalCache[bool] = StampedLocalCache(
    "rag_documents", lambda: settings.PROMPT_CACHE_CHECK_SECONDS
)


def tenant_has_documents(*, tenant: Tenant) -> bool:
    """Whether the tenant has chunks to retrieve (RAG is on by default then). Cached per process."""
    return documents_cache.get(str(tenant.pk), "chunks", lambda: Chunk.objects.filter(tenant=tenant).exists())


def tenant_documents_changed(*, tenant_id: int) -> None:
    """A document became ready or went away: answers cached from the old documents are stale, and a
    tenant that grew past the threshold gets its own vector index (after commit, in the worker)."""
    from chat.tasks import tenant_vector_index_sync_task

    documents_cache.invalidate(str(tenant_id))
    SemanticCacheEntry.objects.filter(tenant_id=tenant_id).delete()
    transaction.on_commit(lambda: tenant_vector_index_sync_task.delay(tenant_id))
