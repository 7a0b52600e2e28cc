"""Chat endpoints: POST /api/v1/chat (JSON or SSE), conversations, and the OpenAI-compatible
POST /v1/chat/completions and GET /v1/models. All run the same pipeline (chat/services.py)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from django.conf import settings
from django.db.models import Count, QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiRequest, OpenApiResponse, extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from billing.documents import format_usd
from chat.documents import content_type_for, document_create, document_delete, document_reingest
from chat.idempotency import (
    body_fingerprint,
    idempotency_abandon,
    idempotency_begin,
    idempotency_complete,
    request_id_for,
)
from chat.models import Conversation, Document
from chat.retrieval import retrieve
from chat.selectors import available_chat_models
from chat.serializers import (
    ChatCompletionRequestSerializer,
    ChatRequestSerializer,
    ConversationSerializer,
    ConversationSummarySerializer,
    DocumentJSONUploadSerializer,
    DocumentListQuerySerializer,
    DocumentMultipartUploadSerializer,
    DocumentSearchSerializer,
    DocumentSerializer,
    DocumentUploadedSerializer,
)
from chat.services import (
    ChatParams,
    ChatResult,
    ChatStream,
    StreamError,
    chat_complete,
    chat_stream,
    conversation_delete,
)
from tenants.api import TenantAPIView, TenantScopedViewSet
from tenants.errors import ApiError, error_body
from tenants.middleware import document_upload_bytes_limit
from tenants.models import Scope, Tenant
from tenants.openapi import error_responses
from tenants.parsers import StrictJSONParser


def sse_event_schema(*, events: list[str] | None) -> dict[str, Any]:
    """One Server-Sent Event of a stream, as the schema describes it: `data` is JSON (or `[DONE]`)."""
    properties: dict[str, Any] = {"data": {"type": "string"}}
    if events:
        properties["event"] = {"type": "string", "enum": events}
    return {"type": "object", "properties": properties, "required": ["data"]}


def sse(event: str | None, data: Any) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, default=str, separators=(',', ':'))}\n\n"


class _StreamBody:
    """A streamed response's chunks, which close the pipeline's events with them. The WSGI server
    closes the response when the client is gone, after any chunk or before the first: the pipeline
    then settles at once, whether or not the generator making the chunks ever started."""

    def __init__(
        self, chunks: Iterator[str], pipeline: Iterator[Any] | None, on_unfinished: Callable[[], None] | None
    ) -> None:
        self.chunks, self.pipeline, self.on_unfinished = chunks, pipeline, on_unfinished
        self.finished = False

    def __iter__(self) -> _StreamBody:
        return self

    def __next__(self) -> str:
        try:
            return next(self.chunks)
        except StopIteration:
            self.finished = True
            raise

    def close(self) -> None:
        try:
            close_chunks = getattr(self.chunks, "close", None)
            if close_chunks is not None:
                close_chunks()
        finally:
            try:
                close_pipeline = getattr(self.pipeline, "close", None)
                if close_pipeline is not None:
                    close_pipeline()
            finally:
                if not self.finished and self.on_unfinished is not None:
                    self.on_unfinished()


def event_stream(
    chunks: Iterator[str],
    pipeline: Iterator[Any] | None = None,
    on_unfinished: Callable[[], None] | None = None,
) -> StreamingHttpResponse:
    """Server-Sent Events; `pipeline` (chat_stream's events) is closed when the response is, and
    `on_unfinished` called when it is closed before its last chunk (the client gone)."""
    response = StreamingHttpResponse(
        _StreamBody(chunks, pipeline, on_unfinished), content_type="text/event-stream; charset=utf-8"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: pass each event through as it comes
    return response


def result_data(result: ChatResult) -> dict[str, Any]:
    return {
        "id": result.id,
        "conversation_id": result.conversation_id,
        "answer": result.answer,
        "citations": result.citations,
        "model": result.model,
        "provider": result.provider,
        "usage": {
            "input_tokens": result.usage.input_tokens,
            "cached_input_tokens": result.usage.cached_input_tokens,
            "output_tokens": result.usage.output_tokens,
            "cost_usd": format_usd(result.cost_nanos),
        },
        "prompt": result.prompt,
        "trace_id": result.trace_id,
        "cached": result.cached,
        "finish_reason": result.finish_reason,
    }


class IdempotentChatView(TenantAPIView):
    """Base of the chat endpoints: Idempotency-Key (header or field) around a chat call."""

    def idempotency(self, request: Request, tenant: Tenant, body: dict[str, Any]) -> tuple[str | None, str]:
        """The request's Idempotency-Key (None without one) and the fingerprint of its body."""
        key = request.headers.get("Idempotency-Key") or body.get("idempotency_key")
        if key is None:
            return None, ""
        if not isinstance(key, str) or not (0 < len(key) <= 200) or "\x00" in key:
            raise ApiError(
                "Idempotency-Key must be a string of 1 to 200 characters, without NUL.",
                status_code=400,
                code="invalid_idempotency_key",
                param="idempotency_key",
            )
        # The endpoint is part of what the key stands for: the same key and body sent to the other chat
        # endpoint is another request (422), not a replay in the wrong shape.
        request_body = {k: v for k, v in body.items() if k != "idempotency_key"}
        return key, body_fingerprint({"endpoint": request.path_info, "body": request_body})

    def abandoning(self, key: str | None) -> Callable[[], None] | None:
        """For a stream the client leaves before its end (charged for what it delivered): frees the
        key, so a retry is a new call under a new request id, charged as such. Under the old id the
        ledger would take it for the charged run and charge nothing for a whole new answer."""
        if key is None:
            return None
        return partial(idempotency_abandon, tenant=self.tenant, key=key)

    def answer_once(
        self, key: str | None, fingerprint: str, produce: Callable[[], dict[str, Any]]
    ) -> Response:
        """Runs the call and keeps its body for replays of `key`; a failure frees the key for a retry."""
        try:
            body = produce()
        except Exception:
            if key is not None:
                idempotency_abandon(tenant=self.tenant, key=key)
            raise
        if key is not None:
            idempotency_complete(tenant=self.tenant, key=key, fingerprint=fingerprint, response=body)
        return Response(body)


class ChatView(IdempotentChatView):
    required_scope = Scope.CHAT

    @extend_schema(
        request=ChatRequestSerializer,
        responses={
            (200, "application/json"): OpenApiTypes.OBJECT,
            (200, "text/event-stream"): OpenApiResponse(
                sse_event_schema(events=["delta", "done", "error"]),
                description="With `stream: true`: `delta` events ({text}), then one `done` (the JSON "
                "answer) or `error` (the error shape) event.",
            ),
            **error_responses(402, 404, 409, 422, 502, 503),
        },
        summary="Chat: JSON, or Server-Sent Events (delta events, then done or error) with stream",
    )
    def post(self, request: Request) -> Any:
        serializer = ChatRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        key, fingerprint = self.idempotency(request, self.tenant, dict(request.data))
        if key is not None:
            stored = idempotency_begin(tenant=self.tenant, key=key, fingerprint=fingerprint)
            if stored is not None:
                return self._replay(stored, stream=data["stream"])
        params = ChatParams(
            endpoint="chat",
            message=data["message"],
            conversation_id=data.get("conversation_id"),
            prompt=data.get("prompt"),
            label=data.get("label"),
            version=data.get("version"),
            variables=data["variables"],
            user=data["user"],
            model=data.get("model"),
            max_tokens=data.get("max_tokens"),
            temperature=data.get("temperature"),
            top_p=data.get("top_p"),
            rag=data["rag"],
            request_id=request_id_for(self.tenant, key) if key else uuid.uuid4().hex,
        )
        if data["stream"]:
            try:
                events = chat_stream(tenant=self.tenant, params=params)  # raises before the first token
            except Exception:
                if key is not None:
                    idempotency_abandon(tenant=self.tenant, key=key)
                raise
            return event_stream(
                self._relay_events(events, key, fingerprint),
                pipeline=events,
                on_unfinished=self.abandoning(key),
            )
        return self.answer_once(
            key, fingerprint, lambda: result_data(chat_complete(tenant=self.tenant, params=params))
        )

    def _relay_events(
        self, events: Iterator[str | ChatResult | StreamError], key: str | None, fingerprint: str
    ) -> Iterator[str]:
        for event in events:
            if isinstance(event, str):
                yield sse("delta", {"text": event})
            elif isinstance(event, StreamError):
                if key is not None:
                    idempotency_abandon(tenant=self.tenant, key=key)
                yield sse(
                    "error",
                    error_body(
                        event.error.status_code, str(event.error.detail), code=str(event.error.get_codes())
                    ),
                )
            else:
                body = result_data(event)
                if key is not None:
                    idempotency_complete(
                        tenant=self.tenant,
                        key=key,
                        fingerprint=fingerprint,
                        response=json.loads(json.dumps(body, default=str)),
                    )
                yield sse("done", body)

    @staticmethod
    def _replay(stored: dict[str, Any], *, stream: bool) -> Any:
        if not stream:
            return Response(stored, headers={"Idempotent-Replayed": "true"})
        response = event_stream(iter([sse("delta", {"text": stored["answer"]}), sse("done", stored)]))
        response["Idempotent-Replayed"] = "true"
        return response


class ConversationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    model = Conversation
    required_scope = Scope.CHAT
    lookup_value_regex = r"[0-9a-fA-F-]{32,36}"

    def scoped_queryset(self) -> QuerySet[Conversation]:
        return Conversation.objects.annotate(message_count=Count("messages")).order_by("-updated_at")

    @staticmethod
    def _summary(conversation: Conversation) -> dict[str, Any]:
        return {
            "id": conversation.id,
            "title": conversation.title,
            "user": conversation.end_user,
            "created_at": conversation.created_at,
            "updated_at": conversation.updated_at,
            "message_count": getattr(conversation, "message_count", None),
        }

    @extend_schema(
        responses=ConversationSummarySerializer(many=True),
        summary="Conversations, most recent first",
        operation_id="conversations_list",
    )
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response([self._summary(conversation) for conversation in page or []])

    @extend_schema(
        parameters=[OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
        responses=ConversationSerializer,
        summary="A conversation with its messages",
    )
    def retrieve(self, request: Request, pk: str) -> Response:
        conversation = self.get_object()
        messages = [
            {"role": m.role, "content": m.content, "created_at": m.created_at}
            for m in conversation.messages.all()
        ]
        return Response({**self._summary(conversation), "messages": messages})

    @extend_schema(
        parameters=[OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)], responses={204: None}
    )
    def destroy(self, request: Request, pk: str) -> Response:
        conversation_delete(tenant=self.tenant, conversation_id=self.get_object().id)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- documents -----------------------------------------------------------------------------------------


def document_data(document: Document) -> dict[str, Any]:
    return {
        "id": document.id,
        "title": document.title,
        "source_filename": document.source_filename,
        "content_type": document.content_type,
        "size_bytes": document.size_bytes,
        "sha256": document.sha256,
        "status": document.status,
        "error": document.error or None,
        "chunk_count": document.chunk_count,
        "progress": {
            "chunks_embedded": document.chunks_embedded,
            "chunks_total": document.chunk_count,
            "fraction": round(document.progress, 4),
        },
        "embedder": document.embedder or None,
        "created_at": document.created_at,
        "updated_at": document.updated_at,
        "ingested_at": document.ingested_at,
    }


class DocumentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, TenantScopedViewSet):
    """The tenant's documents for retrieval: upload (multipart file or JSON text), list, progress,
    delete, ingest again, and a search that shows what chat would retrieve."""

    model = Document
    required_scope = Scope.DOCUMENTS
    lookup_value_regex = r"[0-9a-fA-F-]{32,36}"
    parser_classes = [StrictJSONParser, MultiPartParser]

    def scoped_queryset(self) -> QuerySet[Document]:
        queryset = Document.objects.defer("content").order_by("-created_at")
        if self.action == "list":
            query = DocumentListQuerySerializer(data=self.request.query_params)
            query.is_valid(raise_exception=True)
            if "status" in query.validated_data:
                queryset = queryset.filter(status=query.validated_data["status"])
        return queryset

    @extend_schema(
        parameters=[DocumentListQuerySerializer],
        responses=DocumentSerializer(many=True),
        summary="Documents, newest first",
        operation_id="documents_list",
    )
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response([document_data(document) for document in page or []])

    @extend_schema(
        parameters=[OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
        responses=DocumentSerializer,
        summary="A document with its ingestion progress",
    )
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(document_data(self.get_object()))

    @extend_schema(
        request={
            "multipart/form-data": OpenApiRequest(
                DocumentMultipartUploadSerializer,
                encoding={"file": {"contentType": "text/plain, text/markdown, text/html, application/pdf"}},
            ),
            "application/json": OpenApiRequest(DocumentJSONUploadSerializer),
        },
        responses={201: DocumentUploadedSerializer, 200: DocumentUploadedSerializer},
        summary="Upload a document (.txt, .md, .html, .pdf as multipart `file`, or JSON {title, text}); "
        "201 and ingestion queued, or 200 with the earlier document of identical content",
    )
    def create(self, request: Request) -> Response:
        limit = settings.RAG_MAX_UPLOAD_BYTES
        try:
            declared_length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            declared_length = 0
        if declared_length > document_upload_bytes_limit():  # unread and far too large
            raise self._too_large(declared_length, limit)
        if request.content_type.startswith("multipart/form-data"):
            upload = DocumentMultipartUploadSerializer(data=request.data)
            upload.is_valid(raise_exception=True)
            file = upload.validated_data["file"]
            if file.size is not None and file.size > limit:
                raise self._too_large(file.size, limit)
            filename = file.name or ""
            content_type = content_type_for(declared=file.content_type, filename=filename)
            content, title = file.read(), upload.validated_data["title"]
        else:
            body = DocumentJSONUploadSerializer(data=request.data)
            body.is_valid(raise_exception=True)
            filename, content_type = "", body.validated_data["content_type"]
            content, title = body.validated_data["text"].encode(), body.validated_data["title"]
        document, created = document_create(
            tenant=self.tenant, content=content, content_type=content_type, title=title, filename=filename
        )
        return Response(
            {**document_data(document), "duplicate": not created},
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @staticmethod
    def _too_large(size: int, limit: int) -> ApiError:
        return ApiError(
            f"The upload is {size} bytes; documents may be at most {limit} bytes.",
            status_code=413,
            code="document_too_large",
            param="file",
        )

    @extend_schema(
        parameters=[OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)], responses={204: None}
    )
    def destroy(self, request: Request, pk: str) -> Response:
        document_delete(tenant=self.tenant, document_id=self.get_object().id)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        parameters=[OpenApiParameter("id", OpenApiTypes.UUID, OpenApiParameter.PATH)],
        request=None,
        responses={202: DocumentSerializer, **error_responses(409)},
        summary="Ingest a ready or failed document again (e.g. after a failure or a new embedder)",
    )
    @action(detail=True, methods=["post"])
    def reingest(self, request: Request, pk: str) -> Response:
        document = document_reingest(tenant=self.tenant, document_id=self.get_object().id)
        return Response(document_data(document), status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=DocumentSearchSerializer,
        responses=OpenApiTypes.OBJECT,
        summary="The chunks chat would retrieve for a query, with their scores",
    )
    @action(detail=False, methods=["post"], parser_classes=[StrictJSONParser])  # multipart is for uploads
    def search(self, request: Request) -> Response:
        body = DocumentSearchSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        found = retrieve(
            tenant_id=self.tenant.pk,
            query=body.validated_data["query"],
            k=body.validated_data["k"],
        )
        return Response(
            {
                "results": [{**chunk.citation(), "text": chunk.text} for chunk in found.chunks],
                "query_ms": round(found.query_ms, 2),
            }
        )


# --- OpenAI-compatible ------------------------------------------------------------------------------


def completion_body(result: ChatResult, created: int, *, rag: bool = False) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{result.id}",
        "object": "chat.completion",
        "created": created,
        "model": result.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.answer},
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": _openai_usage(result),
        "system_fingerprint": None,
        "x_trace_id": str(result.trace_id),  # ours: find the request's trace in the admin
        **({"citations": result.citations} if rag else {}),  # ours, with "rag": true (maybe [])
    }


def _openai_usage(result: ChatResult) -> dict[str, Any]:
    usage = result.usage
    prompt_tokens = usage.input_tokens + usage.cached_input_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": prompt_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
    }


# Refusals that no wait within reason would end: an exhausted budget or monthly token quota.
EXHAUSTED_QUOTA_CODES = frozenset({"budget_exceeded", "monthly_token_quota_exceeded"})


def as_openai_insufficient_quota(response: Response) -> Response:
    """OpenAI's own answer to an exhausted quota (429, type and code `insufficient_quota`), with
    `x-should-retry: false`: OpenAI clients recognise it and raise at once. A 402 is a bare status
    error to them, and the quota's Retry-After (the next month) had llama-index sleeping on it."""
    error = response.data.get("error", {}) if isinstance(response.data, dict) else {}
    if error.get("code") not in EXHAUSTED_QUOTA_CODES:
        return response
    error.update(type="insufficient_quota", code="insufficient_quota")
    response.status_code = 429
    response["x-should-retry"] = "false"
    if response.has_header("Retry-After"):
        del response["Retry-After"]
    return response


class ChatCompletionsView(IdempotentChatView):
    """POST /v1/chat/completions, for the official `openai` SDK with base_url=<server>/v1."""

    required_scope = Scope.CHAT

    def handle_exception(self, exc: Exception) -> Response:
        return as_openai_insufficient_quota(super().handle_exception(exc))

    @extend_schema(
        request=ChatCompletionRequestSerializer,
        responses={
            (200, "application/json"): OpenApiTypes.OBJECT,
            (200, "text/event-stream"): OpenApiResponse(
                sse_event_schema(events=None),
                description="With `stream: true`: `chat.completion.chunk` data events, then `data: [DONE]`.",
            ),
            **error_responses(402, 409, 422, 502, 503),
        },
        summary="OpenAI-compatible chat completions (JSON or SSE chunks)",
    )
    def post(self, request: Request) -> Any:
        serializer = ChatCompletionRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        messages = [
            {"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
            for m in data["messages"]
        ]
        key, fingerprint = self.idempotency(request, self.tenant, dict(request.data))
        include_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        if key is not None:
            stored = idempotency_begin(tenant=self.tenant, key=key, fingerprint=fingerprint)
            if stored is not None:
                replay = (
                    event_stream(replayed_chunks(stored, include_usage))
                    if data["stream"]
                    else Response(stored)
                )
                replay["Idempotent-Replayed"] = "true"
                return replay
        params = ChatParams(
            endpoint="openai",
            messages=messages,
            message=next((m["content"] for m in reversed(messages) if m["role"] == "user"), ""),
            user=data["user"],
            model=data["model"],
            max_tokens=data.get("max_completion_tokens") or data.get("max_tokens"),
            temperature=data.get("temperature"),
            top_p=data.get("top_p"),
            stop=data["stop"],
            rag=bool(data.get("rag")),
            request_id=request_id_for(self.tenant, key) if key else uuid.uuid4().hex,
        )
        created = int(time.time())
        if data["stream"]:
            try:
                events = chat_stream(tenant=self.tenant, params=params)  # raises before the first token
            except Exception:
                if key is not None:
                    idempotency_abandon(tenant=self.tenant, key=key)
                raise
            return event_stream(
                self._chunks(events, params, created, include_usage, key, fingerprint),
                pipeline=events,
                on_unfinished=self.abandoning(key),
            )
        return self.answer_once(
            key,
            fingerprint,
            lambda: completion_body(
                chat_complete(tenant=self.tenant, params=params), created, rag=bool(params.rag)
            ),
        )

    def _chunks(
        self,
        events: ChatStream,
        params: ChatParams,
        created: int,
        include_usage: bool,
        key: str | None,
        fingerprint: str,
    ) -> Iterator[str]:
        base = {
            "id": f"chatcmpl-{params.request_id}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": events.model,  # the one serving the answer, as OpenAI's chunks say
        }
        yield sse(
            None,
            {
                **base,
                "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                ],
            },
        )
        for event in events:
            if isinstance(event, str):
                yield sse(
                    None,
                    {
                        **base,
                        "choices": [{"index": 0, "delta": {"content": event}, "finish_reason": None}],
                    },
                )
            elif isinstance(event, StreamError):
                if key is not None:
                    idempotency_abandon(tenant=self.tenant, key=key)
                yield sse(
                    None,
                    error_body(
                        event.error.status_code,
                        str(event.error.detail),
                        code=str(event.error.get_codes()),
                    ),
                )
            else:
                if key is not None:
                    idempotency_complete(
                        tenant=self.tenant,
                        key=key,
                        fingerprint=fingerprint,
                        response=completion_body(event, created, rag=bool(params.rag)),
                    )
                finish = {"index": 0, "delta": {}, "finish_reason": event.finish_reason}
                citations = {"citations": event.citations} if params.rag else {}
                yield sse(None, {**base, "choices": [finish], **citations})
                if include_usage:
                    yield sse(None, {**base, "choices": [], "usage": _openai_usage(event)})
        yield "data: [DONE]\n\n"


def replayed_chunks(stored: dict[str, Any], include_usage: bool) -> Iterator[str]:
    """A stored completion (Idempotency-Key replay) as the chunk stream a streaming client expects."""
    base = {
        "id": stored["id"],
        "object": "chat.completion.chunk",
        "created": stored["created"],
        "model": stored["model"],
    }
    content = stored["choices"][0]["message"]["content"]
    yield sse(
        None,
        {
            **base,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": None}
            ],
        },
    )
    finish = {"index": 0, "delta": {}, "finish_reason": stored["choices"][0]["finish_reason"]}
    citations = {"citations": stored["citations"]} if "citations" in stored else {}
    yield sse(None, {**base, "choices": [finish], **citations})
    if include_usage:
        yield sse(None, {**base, "choices": [], "usage": stored["usage"]})
    yield "data: [DONE]\n\n"


class ModelsView(TenantAPIView):
    required_scope = Scope.CHAT

    @extend_schema(
        responses=OpenApiTypes.OBJECT, summary="OpenAI-compatible list of the models this tenant may use"
    )
    def get(self, request: Request) -> Response:
        data = [
            {"id": model, "object": "model", "created": 0, "owned_by": provider}
            for provider, model in available_chat_models(tenant=self.tenant)
        ]
        return Response({"object": "list", "data": data})
