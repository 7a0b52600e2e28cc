"""Documents: upload formats and bad uploads, ingestion through the Celery task (idempotent, retried,
recorded failures), progress, deletion, the ingest and reembed commands, the start-up checks."""

from __future__ import annotations

import itertools
import threading
from datetime import timedelta

import pytest
from django.core import checks
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction
from django.utils import timezone
from hypothesis import assume, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat.checks import vector_column_dimensions
from chat.documents import (
    chunk_text,
    document_create,
    document_delete,
    document_ingest,
    documents_fail_stalled,
)
from chat.embeddings import get_embedder
from chat.models import Chunk, Document, DocumentStatus, SemanticCacheEntry
from chat.tokens import estimate_tokens
from tests.conftest import client_with_key

pytestmark = pytest.mark.usefixtures("eager_tasks")


def upload_file(client, name: str, content: bytes, content_type: str, **fields):
    return client.post(
        "/api/v1/documents",
        {"file": SimpleUploadedFile(name, content, content_type=content_type), **fields},
        format="multipart",
    )


def make_pdf(text: str) -> bytes:
    from weasyprint import HTML

    return HTML(string=f"<html><body><h1>Handbook</h1><p>{text}</p></body></html>").write_pdf()


def chunk_texts(document_id) -> list[str]:
    return list(
        Chunk.objects.filter(document_id=document_id).order_by("ordinal").values_list("text", flat=True)
    )


@pytest.mark.parametrize(
    ("name", "content_type", "body", "expected", "absent"),
    [
        ("notes.txt", "text/plain", b"The vault code is 4711.\n\nKeep it safe.", "vault code is 4711", None),
        (
            "guide.md",
            "text/markdown",
            b"# Guide\n\nThe *vault* code is 4711.",
            "The *vault* code is 4711.",
            None,
        ),
        (
            "page.html",
            "text/html",
            b"<html><head><title>Vault</title><style>p{color:red}</style></head>"
            b"<body><p>The vault code is <b>4711</b>.</p><script>alert('x')</script></body></html>",
            "The vault code is 4711 .",
            "alert",
        ),
        ("notes.txt", "application/octet-stream", b"The vault code is 4711.", "vault code is 4711", None),
    ],
)
def test_text_markdown_and_html_files_are_ingested(
    docs_client, tenant, django_capture_on_commit_callbacks, name, content_type, body, expected, absent
):
    with django_capture_on_commit_callbacks(execute=True):
        response = upload_file(docs_client, name, body, content_type)
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["status"] == "pending"
    assert created["duplicate"] is False
    assert created["source_filename"] == name
    document = docs_client.get(f"/api/v1/documents/{created['id']}").json()
    assert document["status"] == "ready"
    assert document["progress"] == {"chunks_embedded": 1, "chunks_total": 1, "fraction": 1.0}
    assert document["embedder"] == "hashing-384"
    text = " ".join(chunk_texts(created["id"])[0].split())
    assert expected in text
    if absent:
        assert absent not in text
    assert Chunk.objects.get(document_id=created["id"]).tenant_id == tenant.pk


def test_json_upload_and_title(docs_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = docs_client.post(
            "/api/v1/documents", {"title": "Vault", "text": "The vault code is 4711."}, format="json"
        )
    assert response.status_code == 201
    assert response.json()["title"] == "Vault"
    assert response.json()["content_type"] == "text/plain"
    assert chunk_texts(response.json()["id"]) == ["The vault code is 4711."]


def test_pdf_upload_is_ingested_with_its_text(docs_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = upload_file(
            docs_client,
            "handbook.pdf",
            make_pdf("Employees receive sixteen weeks of leave."),
            "application/pdf",
        )
    assert response.status_code == 201
    document = Document.objects.get(pk=response.json()["id"])
    assert document.status == DocumentStatus.READY, document.error
    assert "sixteen weeks of leave" in " ".join(chunk_texts(document.pk))
    assert document.title == "handbook"


def test_broken_pdf_fails_with_the_reason(docs_client, django_capture_on_commit_callbacks):
    broken = b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\nthis is not a pdf body\n"
    with django_capture_on_commit_callbacks(execute=True):
        response = upload_file(docs_client, "broken.pdf", broken, "application/pdf")
    assert response.status_code == 201
    document = docs_client.get(f"/api/v1/documents/{response.json()['id']}").json()
    assert document["status"] == "failed"
    assert "PDF" in document["error"]
    assert Chunk.objects.count() == 0


@pytest.mark.parametrize(
    ("name", "content", "content_type", "status", "code"),
    [
        ("empty.txt", b"", "text/plain", 400, None),
        ("blank.txt", b"  \n\t ", "text/plain", 400, "empty_document"),
        ("photo.png", b"\x89PNG\r\n", "image/png", 415, "unsupported_document_type"),
        ("tool.exe", b"MZ\x90\x00", "application/octet-stream", 415, "unsupported_document_type"),
        ("fake.pdf", b"just text pretending", "application/pdf", 400, "invalid_pdf"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), "text/plain", 400, "invalid_encoding"),
        ("big.txt", b"x" * 2048, "text/plain", 413, "document_too_large"),
    ],
)
def test_bad_uploads_get_a_clear_4xx_and_change_nothing(
    docs_client, settings, django_capture_on_commit_callbacks, name, content, content_type, status, code
):
    settings.RAG_MAX_UPLOAD_BYTES = 1024
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = upload_file(docs_client, name, content, content_type)
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["message"]
    if code:
        assert error["code"] == code
    assert Document.objects.count() == 0
    assert callbacks == []


@pytest.mark.parametrize(
    "body",
    [
        {"title": "x"},
        {"text": ""},
        {"text": ["a list"]},
        {"text": "ok", "content_type": "application/pdf"},
        {"text": "\u00a0"},  # Unicode whitespace and byte order marks only: empty too
        {"text": "\ufeff"},
        {"text": "\u2003\n\u3000"},
    ],
)
def test_bad_json_uploads_are_400(docs_client, body):
    response = docs_client.post("/api/v1/documents", body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["message"]
    assert Document.objects.count() == 0


def test_a_body_far_over_the_limit_is_refused_before_it_is_read(docs_client, settings):
    settings.RAG_MAX_UPLOAD_BYTES = 100
    response = docs_client.post("/api/v1/documents", {"text": "y" * 2000}, format="json")
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"


def test_a_document_over_the_api_body_limit_but_within_its_own_is_accepted(
    docs_client, settings, django_capture_on_commit_callbacks
):
    """API_MAX_REQUEST_BYTES (1 MiB) bounds API bodies; an upload has RAG_MAX_UPLOAD_BYTES (10 MB)."""
    text = "The fertilizer is stored in the shed. " * 60_000  # 2.3 MB
    assert settings.API_MAX_REQUEST_BYTES < len(text) < settings.RAG_MAX_UPLOAD_BYTES
    with django_capture_on_commit_callbacks(execute=False):
        as_file = upload_file(docs_client, "big.txt", text.encode(), "text/plain")
        as_json = docs_client.post("/api/v1/documents", {"title": "big", "text": text + "!"}, format="json")
    assert (as_file.status_code, as_json.status_code) == (201, 201), (as_file.content, as_json.content)
    elsewhere = docs_client.post("/api/v1/chat", {"message": text}, format="json")
    assert elsewhere.status_code == 413  # every other endpoint keeps API_MAX_REQUEST_BYTES
    assert elsewhere.json()["error"]["code"] == "request_too_large"


def test_a_json_upload_past_djangos_memory_cap_is_accepted(
    docs_client, settings, django_capture_on_commit_callbacks
):
    """Django refuses a request.body over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MiB by default) with
    RequestDataTooBig, a 400; DRF reads JSON through it. A JSON upload is held to its own limit."""
    text = "The fertilizer is stored in the shed. " * 85_000  # 3.2 MB
    assert 2.5 * 1024 * 1024 < len(text) < settings.RAG_MAX_UPLOAD_BYTES
    with django_capture_on_commit_callbacks(execute=False):
        response = docs_client.post("/api/v1/documents", {"title": "big", "text": text}, format="json")
    assert response.status_code == 201, response.content[:300]
    assert Document.objects.get().title == "big"


def test_a_json_document_over_its_limit_is_a_413(docs_client, settings):
    """A 20 MB text in a body within what a JSON upload may declare: the document limit answers."""
    text = "y" * (2 * settings.RAG_MAX_UPLOAD_BYTES)
    response = docs_client.post("/api/v1/documents", {"title": "huge", "text": text}, format="json")
    assert response.status_code == 413, response.content[:300]
    assert response.json()["error"]["code"] == "document_too_large"
    assert Document.objects.count() == 0


def test_the_admin_keeps_djangos_body_limit(client):
    """Raising Django's cap for uploads leaves every non-API path at Django's default 2.5 MiB (the
    admin login reads its form before anyone is authenticated)."""
    response = client.post(
        "/admin/login/", b"a=" + b"x" * (3 * 1024 * 1024), content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 413


def test_identical_content_is_detected_by_hash(
    docs_client, other_tenant, make_key, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        first = upload_file(docs_client, "a.txt", b"Same words.", "text/plain")
        again = upload_file(docs_client, "b.txt", b"Same words.", "text/plain")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["duplicate"] is True
    # Another tenant's identical file is its own document.
    other = client_with_key(make_key(other_tenant, scopes=["documents"])[1])
    theirs = upload_file(other, "a.txt", b"Same words.", "text/plain")
    assert theirs.status_code == 201
    assert theirs.json()["id"] != first.json()["id"]


def test_ingestion_is_idempotent(tenant, settings):
    settings.RAG_CHUNK_TOKENS = 20
    settings.RAG_CHUNK_OVERLAP_TOKENS = 5
    text = " ".join(f"Sentence number {n} talks about topic {n % 7}." for n in range(60))
    document, _ = document_create(
        tenant=tenant, content=text.encode(), content_type="text/plain", enqueue=False
    )
    document_ingest(document_id=document.pk)
    first = list(Chunk.objects.filter(document=document).order_by("ordinal").values_list("ordinal", "text"))
    ids = set(Chunk.objects.filter(document=document).values_list("id", flat=True))
    assert len(first) > 5
    document_ingest(document_id=document.pk)  # already ingested with this embedder: nothing to do
    assert set(Chunk.objects.filter(document=document).values_list("id", flat=True)) == ids
    document_ingest(document_id=document.pk, force=True)  # the task delivered twice: same chunks again
    second = list(Chunk.objects.filter(document=document).order_by("ordinal").values_list("ordinal", "text"))
    assert second == first
    document.refresh_from_db()
    assert (document.status, document.chunk_count, document.chunks_embedded) == (
        "ready",
        len(first),
        len(first),
    )


def test_chunks_follow_size_and_overlap_and_cover_the_text():
    text = "\n\n".join(
        " ".join(f"Paragraph {p} sentence {s} has several words in it." for s in range(6)) for p in range(12)
    )
    pieces = chunk_text(text, chunk_tokens=60, overlap_tokens=15)
    assert len(pieces) > 5
    assert all(piece.token_count <= 60 for piece in pieces)
    assert all(text[piece.start : piece.end] == piece.text for piece in pieces)
    assert pieces[0].start == 0
    assert pieces[-1].end == len(text)
    for before, after in itertools.pairwise(pieces):
        assert after.start < before.end  # overlap...
        assert estimate_tokens(text[after.start : before.end]) <= 15  # ...of at most the overlap size
        assert after.start > before.start  # and always progress
    one_long_sentence = "word " * 500
    long_pieces = chunk_text(one_long_sentence, chunk_tokens=50, overlap_tokens=0)
    assert len(long_pieces) >= 10
    assert all(piece.token_count <= 50 for piece in long_pieces)


def test_deleting_a_document_removes_its_chunks(docs_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        kept = upload_file(docs_client, "keep.txt", b"Keep this one.", "text/plain").json()
        gone = upload_file(docs_client, "gone.txt", b"Delete this one.", "text/plain").json()
    assert Chunk.objects.filter(document_id=gone["id"]).exists()
    with django_capture_on_commit_callbacks(execute=True):
        assert docs_client.delete(f"/api/v1/documents/{gone['id']}").status_code == 204
    assert not Chunk.objects.filter(document_id=gone["id"]).exists()
    assert Chunk.objects.filter(document_id=kept["id"]).exists()
    assert docs_client.get(f"/api/v1/documents/{gone['id']}").status_code == 404
    assert docs_client.delete(f"/api/v1/documents/{gone['id']}").status_code == 404


def test_list_filters_by_status(docs_client, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        upload_file(docs_client, "ok.txt", b"Fine text.", "text/plain")
        upload_file(docs_client, "bad.pdf", b"%PDF-1.4 broken", "application/pdf")
    ready = docs_client.get("/api/v1/documents?status=ready").json()
    failed = docs_client.get("/api/v1/documents?status=failed").json()
    assert [d["source_filename"] for d in ready["results"]] == ["ok.txt"]
    assert [d["source_filename"] for d in failed["results"]] == ["bad.pdf"]
    assert docs_client.get("/api/v1/documents").json()["count"] == 2
    bad = docs_client.get("/api/v1/documents?status=done")
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "status"


def test_documents_need_the_documents_scope(tenant, make_key):
    chat_only = client_with_key(make_key(tenant, scopes=["chat"])[1])
    assert chat_only.get("/api/v1/documents").status_code == 403
    assert chat_only.post("/api/v1/documents", {"text": "x"}, format="json").status_code == 403


def test_a_permanent_embedding_error_fails_at_once_without_leaking_provider_details(
    docs_client, settings, openai_server, django_capture_on_commit_callbacks
):
    settings.EMBEDDING_BACKEND = "openai"
    settings.EMBEDDING_MAX_RETRIES = 0
    openai_server.then("401")  # our credentials refused: retrying cannot help
    with django_capture_on_commit_callbacks(execute=True):
        created = upload_file(docs_client, "a.txt", b"Embed me please.", "text/plain").json()
    document = docs_client.get(f"/api/v1/documents/{created['id']}").json()
    assert document["status"] == "failed"
    assert document["error"].startswith("Embedding failed (config)")
    assert settings.OPENAI_BASE_URL not in document["error"]
    assert "401" not in document["error"]
    assert len([r for r in openai_server.requests if r["path"].endswith("/embeddings")]) == 1


@hypothesis_settings(max_examples=300, deadline=None)
@example("aaaaa bbbb cccc dddd  eeee", 5)  # a word ends at the limit, two spaces follow
@given(
    st.lists(st.sampled_from(["a", "bc", "defgh", " ", "  ", ". ", "\n"]), min_size=1, max_size=1500).map(
        "".join
    ),
    st.integers(min_value=5, max_value=60),
)
def test_no_chunk_is_over_its_size_whatever_the_whitespace(text, chunk_tokens):
    text = text.strip()  # as extraction leaves it
    assume(text)
    pieces = chunk_text(text, chunk_tokens=chunk_tokens, overlap_tokens=chunk_tokens // 5)
    assert all(piece.token_count <= chunk_tokens for piece in pieces)
    assert all(piece.text.strip() for piece in pieces)


def test_a_word_longer_than_a_chunk_is_cut():
    text = "Start. " + "x" * 5000 + " end."
    pieces = chunk_text(text, chunk_tokens=100, overlap_tokens=10)
    assert len(pieces) > 1
    assert all(piece.token_count <= 100 for piece in pieces)
    assert "".join(piece.text for piece in pieces).count("x") >= 5000  # nothing of it is lost


def test_stalled_documents_are_failed_and_can_be_ingested_again(
    docs_client, tenant, settings, django_capture_on_commit_callbacks
):
    settings.RAG_INGEST_STALLED_SECONDS = 600
    stalled, _ = document_create(
        tenant=tenant, content=b"Lost in the queue.", content_type="text/plain", enqueue=False
    )
    recent, _ = document_create(
        tenant=tenant, content=b"Just queued.", content_type="text/plain", enqueue=False
    )
    Document.objects.filter(pk=stalled.pk).update(updated_at=timezone.now() - timedelta(seconds=601))
    assert documents_fail_stalled() == 1
    stalled.refresh_from_db()
    recent.refresh_from_db()
    assert (stalled.status, recent.status) == ("failed", "pending")
    assert "ingest it again" in stalled.error
    with django_capture_on_commit_callbacks(execute=True):
        assert docs_client.post(f"/api/v1/documents/{stalled.pk}/reingest").status_code == 202
    stalled.refresh_from_db()
    assert stalled.status == "ready"


def test_an_upload_succeeds_when_the_queue_is_unreachable(
    docs_client, monkeypatch, django_capture_on_commit_callbacks
):
    from kombu.exceptions import OperationalError

    from chat.tasks import document_ingest_task

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to the broker. Connection refused.")

    monkeypatch.setattr(document_ingest_task, "delay", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        response = docs_client.post("/api/v1/documents", {"text": "Queue me."}, format="json")
    assert response.status_code == 201
    assert Document.objects.get().status == "pending"  # marked failed later if it stays there


def test_embedding_failures_are_retried_then_recorded_and_reingest_recovers(
    docs_client, settings, openai_server, django_capture_on_commit_callbacks
):
    settings.EMBEDDING_BACKEND = "openai"
    settings.EMBEDDING_MAX_RETRIES = 0
    openai_server.then(*["500"] * 6)  # the first run and its 5 retries
    with django_capture_on_commit_callbacks(execute=True):
        created = upload_file(docs_client, "a.txt", b"Embed me please.", "text/plain").json()
    document = docs_client.get(f"/api/v1/documents/{created['id']}").json()
    assert document["status"] == "failed"
    assert "Embedding failed" in document["error"]
    assert len([r for r in openai_server.requests if r["path"].endswith("/embeddings")]) == 6
    with django_capture_on_commit_callbacks(execute=True):
        response = docs_client.post(f"/api/v1/documents/{created['id']}/reingest")
    assert response.status_code == 202
    document = docs_client.get(f"/api/v1/documents/{created['id']}").json()
    assert document["status"] == "ready"
    assert document["error"] is None
    assert document["embedder"] == "openai:text-embedding-3-small-384"


def test_reingest_is_refused_while_queued(docs_client, tenant):
    document, _ = document_create(tenant=tenant, content=b"Queued.", content_type="text/plain", enqueue=False)
    response = docs_client.post(f"/api/v1/documents/{document.pk}/reingest")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "document_busy"


def test_ingest_command_walks_files_and_directories(tenant, tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "one.md").write_text("# One\n\nThe first document.")
    (tmp_path / "docs" / "two.html").write_text("<p>The second document.</p>")
    (tmp_path / "docs" / "skip.bin").write_bytes(b"\x00\x01")
    (tmp_path / "three.txt").write_text("The third document.")
    call_command("ingest", tenant.slug, str(tmp_path / "docs"), str(tmp_path / "three.txt"))
    assert set(Document.objects.filter(tenant=tenant).values_list("source_filename", "status")) == {
        ("one.md", "ready"),
        ("two.html", "ready"),
        ("three.txt", "ready"),
    }
    call_command("ingest", tenant.slug, str(tmp_path / "three.txt"))  # again: no second document
    assert Document.objects.filter(tenant=tenant).count() == 3
    assert "already uploaded" in capsys.readouterr().out
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(CommandError, match="1 of 1"):
        call_command("ingest", tenant.slug, str(tmp_path / "empty.txt"))
    with pytest.raises(CommandError, match="No tenant"):
        call_command("ingest", "nobody", str(tmp_path / "three.txt"))


def database_check_ids() -> set[str]:
    return {message.id for message in checks.run_checks(databases=["default"]) if message.id}


def test_changing_the_embedder_is_caught_at_start_up_and_fixed_by_reembed(tenant, settings, openai_server):
    document, _ = document_create(
        tenant=tenant, content=b"Some words here.", content_type="text/plain", enqueue=False
    )
    document_ingest(document_id=document.pk)
    assert not database_check_ids() & {"chat.E001", "chat.E002", "chat.E003"}
    settings.EMBEDDING_BACKEND = "openai"
    assert "chat.E003" in database_check_ids()
    call_command("reembed")
    document.refresh_from_db()
    assert document.embedder == get_embedder().name == "openai:text-embedding-3-small-384"
    assert not database_check_ids() & {"chat.E002", "chat.E003"}

    settings.EMBEDDING_BACKEND = "hashing"
    settings.EMBEDDING_DIMENSIONS = 64  # a new vector size: the columns are resized
    assert "chat.E002" in database_check_ids()
    call_command("reembed")
    assert vector_column_dimensions("chat_chunk") == 64
    assert vector_column_dimensions("chat_semanticcacheentry") == 64
    chunk = Chunk.objects.get(document=document)
    assert len(chunk.embedding) == 64
    assert not database_check_ids() & {"chat.E002", "chat.E003"}

    settings.EMBEDDING_BACKEND = "word2vec"
    assert "chat.E001" in {message.id for message in checks.run_checks()}


def test_admin_lists_documents_reingests_and_searches_as_a_tenant(
    admin_client, tenant, django_capture_on_commit_callbacks
):
    document, _ = document_create(
        tenant=tenant, content=b"The ficus needs watering every Tuesday.", content_type="text/plain"
    )
    failed, _ = document_create(tenant=tenant, content=b"%PDF-1.4 broken", content_type="application/pdf")
    document_ingest(document_id=document.pk)
    document_ingest(document_id=failed.pk)
    page = admin_client.get("/admin/chat/document/?status__exact=failed").content.decode()
    assert "Search as a tenant" in page
    assert str(failed.pk) in page
    assert str(document.pk) not in page
    detail = admin_client.get(f"/admin/chat/document/{document.pk}/change/").content.decode()
    assert "watering every Tuesday" in detail  # the chunk preview
    assert "100%" in detail
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/admin/chat/document/", {"action": "reingest", "_selected_action": [str(failed.pk)]}
        )
    assert response.status_code == 302
    failed.refresh_from_db()
    assert failed.status == "failed"  # ingested again (eagerly) and failed again, for the same reason
    assert "PDF" in failed.error
    search = admin_client.get(
        "/admin/chat/document/search/", {"tenant": tenant.pk, "query": "when is the ficus watered", "k": 5}
    ).content.decode()
    assert "watering every Tuesday" in search
    assert "exact search" in search
    other = admin_client.get("/admin/chat/document/search/", {"tenant": tenant.pk, "query": "", "k": 5})
    assert other.status_code == 200  # an empty query is a form error, not a 500


def test_admin_delete_goes_through_the_service(admin_client, tenant, chat_client):
    document, _ = document_create(tenant=tenant, content=b"The ficus needs water.", content_type="text/plain")
    document_ingest(document_id=document.pk)
    SemanticCacheEntry.objects.create(
        tenant=tenant,
        embedding=[1.0] + [0.0] * 383,
        question="q",
        model="local:local",
        answer="a",
        provider="local",
        served_model="local",
        expires_at=timezone.now() + timedelta(hours=1),
    )
    response = admin_client.post(f"/admin/chat/document/{document.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Document.objects.filter(pk=document.pk).exists()
    assert not Chunk.objects.filter(document_id=document.pk).exists()
    assert not SemanticCacheEntry.objects.filter(tenant=tenant).exists()  # answers may have quoted it


def test_admin_reingest_skips_a_document_being_ingested(admin_client, tenant):
    queued, _ = document_create(tenant=tenant, content=b"Queued.", content_type="text/plain", enqueue=False)
    response = admin_client.post(
        "/admin/chat/document/", {"action": "reingest", "_selected_action": [str(queued.pk)]}, follow=True
    )
    assert response.status_code == 200
    assert "1 document(s) skipped" in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_deleting_a_document_while_its_chunks_are_stored_waits_and_removes_them(tenant):
    """The ingestion's chunk swap holds the document's row lock; a delete waits for it and then removes
    the chunks it stored (without the lock the delete missed them and failed on the foreign key)."""
    document, _ = document_create(
        tenant=tenant, content=b"Race me.", content_type="text/plain", enqueue=False
    )
    locked, release = threading.Event(), threading.Event()

    def store_chunks() -> None:
        try:
            with transaction.atomic():
                Document.objects.select_for_update().get(pk=document.pk)
                Chunk.objects.create(
                    tenant=tenant,
                    document=document,
                    ordinal=0,
                    text="Race me.",
                    token_count=2,
                    embedding=[1.0] + [0.0] * 383,
                )
                locked.set()
                release.wait(30)
        finally:
            connections.close_all()

    errors: list[Exception] = []

    def delete() -> None:
        try:
            document_delete(tenant=tenant, document_id=document.pk)
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    ingestion = threading.Thread(target=store_chunks)
    ingestion.start()
    assert locked.wait(30)
    deleter = threading.Thread(target=delete)
    deleter.start()
    with connection.cursor() as cursor:  # wait until the delete is blocked on the row lock
        for _ in range(300):
            cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
            if cursor.fetchone()[0]:
                break
            threading.Event().wait(0.05)
    release.set()
    ingestion.join(30)
    deleter.join(30)
    assert errors == []
    assert not Document.objects.filter(pk=document.pk).exists()
    assert not Chunk.objects.filter(document_id=document.pk).exists()


def test_admin_search_needs_permission(client, django_user_model):
    staff = django_user_model.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get("/admin/chat/document/search/").status_code == 403
