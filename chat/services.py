"""The chat pipeline (../shared/ARCHITECTURE.md): guard input -> prompt -> conversation history ->
route -> retrieval (RAG) -> exact cache -> semantic cache -> reserve -> fallback chain -> settle ->
guard output -> store -> trace.

Retrieval runs before the caches because the exact cache key covers the rendered messages, and
those include the retrieved context: a changed document changes the key.

`chat_complete` returns a ChatResult; `chat_stream` yields text deltas and ends with the same
ChatResult (or an error after the first token). Both charge exactly once per request id.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from billing.services import (
    ReservationHandle,
    budget_release,
    budget_reserve,
    budget_settle,
    embedding_models,
    priced_models,
    usage_record,
)
from chat.documents import documents_cache, tenant_has_documents
from chat.embeddings import EmbeddingUnavailable, embed_query
from chat.fallback import (
    OpenStream,
    Served,
    Target,
    complete_call,
    run_chain,
    stream_call_factory,
)
from chat.guards import StreamRedactor, injection_findings, redact
from chat.models import ChatSettings, Conversation, GuardPolicy, Message
from chat.providers import CONTEXT_MARKER, Completion, Finish, ProviderRequest, Usage, provider_configured
from chat.retrieval import RetrievedChunk, retrieve, text_search_index
from chat.semantic_cache import SemanticKey, semantic_cache_lookup, semantic_cache_store
from chat.tokens import estimate_message_tokens, estimate_tokens, input_token_bound
from monitoring.metrics import CACHE_HITS, CACHE_MISSES, refusal_count, refusal_reason
from monitoring.models import TraceStatus
from monitoring.services import TraceRecorder, trace_text_fields
from prompts.selectors import prompt_render, prompt_resolve
from tenants.background import background
from tenants.caching import UNAVAILABLE_STAMP_PREFIX, StampedLocalCache
from tenants.errors import CACHE_ERRORS, ApiError, DomainError, NotFoundError
from tenants.models import Tenant
from tenants.ratelimits import TokenReservation, token_rate_adjusting, token_rate_reserve

T = TypeVar("T")
logger = logging.getLogger(__name__)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatParams:
    endpoint: str
    message: str = ""
    messages: list[dict[str, str]] | None = None  # OpenAI-compatible: the whole conversation
    conversation_id: uuid.UUID | None = None
    prompt: str | None = None
    label: str | None = None
    version: int | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    user: str = ""
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()  # the answer ends before the first of these
    rag: bool | None = None  # None: on for /api/v1/chat when the tenant has documents
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class ChatResult:
    id: str
    conversation_id: uuid.UUID | None
    answer: str
    model: str
    provider: str
    usage: Usage
    cost_nanos: int
    prompt: dict[str, Any] | None
    trace_id: uuid.UUID
    cached: bool
    finish_reason: str = "stop"
    citations: list[dict[str, Any]] = field(default_factory=list)


# --- per-tenant settings --------------------------------------------------------------------------


chat_settings_cache: StampedLocalCache[ChatSettings] = StampedLocalCache(
    "chat_settings", lambda: settings.PROMPT_CACHE_CHECK_SECONDS
)


def chat_settings_for(*, tenant: Tenant) -> ChatSettings:
    def load() -> ChatSettings:
        chat_settings, _ = ChatSettings.objects.get_or_create(tenant=tenant)
        return chat_settings

    return chat_settings_cache.get(str(tenant.pk), "settings", load)


@transaction.atomic
def chat_settings_update(*, tenant: Tenant, actor: str, **changes: Any) -> ChatSettings:
    from tenants.services import audit_event_record

    chat_settings = ChatSettings.objects.select_for_update().get(pk=chat_settings_for(tenant=tenant).pk)
    before = {name: getattr(chat_settings, name) for name in changes}
    for name, value in changes.items():
        setattr(chat_settings, name, value)
    for entry in chat_settings.fallback_chain + (
        [chat_settings.routing_cheap_model] if chat_settings.routing_cheap_model else []
    ):
        validate_target(entry)
    chat_settings.full_clean()
    chat_settings.save()
    if before.get("rag_text_search_config", chat_settings.rag_text_search_config) != (
        chat_settings.rag_text_search_config
    ):  # the keyword index must use the configuration the queries use
        text_search_index(tenant_id=tenant.pk)
    audit_event_record(
        tenant=tenant,
        actor=actor,
        action="chat_settings.update",
        target=chat_settings,
        changes={name: [str(before[name]), str(changes[name])] for name in changes},
    )
    chat_settings_cache.invalidate(str(tenant.pk))
    return chat_settings


# --- targets and routing --------------------------------------------------------------------------


def validate_target(entry: str) -> Target:
    target = Target.parse(entry)
    if target.provider not in ("openai", "anthropic", "local") or not target.model:
        raise DomainError(
            f"'{entry}' is not provider:model with provider openai, anthropic or local.",
            param="fallback_chain",
        )
    return target


def default_chain() -> list[str]:
    if settings.CHAT_DEFAULT_FALLBACK_CHAIN:
        return list(settings.CHAT_DEFAULT_FALLBACK_CHAIN)
    chain = []
    if provider_configured("openai"):
        chain.append("openai:gpt-4o-mini")
    if provider_configured("anthropic"):
        chain.append("anthropic:claude-haiku-4-5")
    return [*chain, "local:local"]


def _target_for_model(model: str) -> Target:
    """The target serving a requested model; 400 for a model that is unknown, embeds, or belongs to
    a provider this deployment has not configured (which is never called)."""
    if ":" in model:
        candidates = [validate_target(model)]
    else:
        candidates = [Target(provider, name) for provider, name in priced_models() if name == model]
        if not candidates:
            raise DomainError(
                f"Unknown model '{model}'. GET /v1/models lists the models you can use.",
                param="model",
                code="model_not_found",
            )
    embedders = set(embedding_models())
    if all((target.provider, target.model) in embedders for target in candidates):
        raise DomainError(
            f"'{model}' is an embedding model, not a chat model. GET /v1/models lists the chat models.",
            param="model",
            code="model_not_available",
        )
    configured = [target for target in candidates if provider_configured(target.provider)]
    if not configured:
        raise DomainError(
            f"Model '{model}' is not available: its provider ({candidates[0].provider}) is not configured "
            "on this deployment. GET /v1/models lists the models you can use.",
            param="model",
            code="model_not_available",
        )
    return configured[0]


def is_simple(text: str, chat_settings: ChatSettings) -> bool:
    lowered = text.lower()
    return len(text) <= chat_settings.routing_max_chars and not any(
        keyword.lower() in lowered for keyword in chat_settings.routing_complex_keywords
    )


def resolve_targets(
    *, tenant: Tenant, chat_settings: ChatSettings, model: str | None, text: str
) -> tuple[list[Target], str]:
    """The ordered chain for this request, and how the first model was chosen (for the trace)."""
    chain = [validate_target(entry) for entry in (chat_settings.fallback_chain or default_chain())]
    reason = "fallback chain"
    if model:
        first = _target_for_model(model)
        if not tenant.allows_model(first.model):
            raise ApiError(
                f"Model '{first.model}' is not allowed for this tenant.",
                status_code=403,
                code="model_not_allowed",
                param="model",
            )
        chain = [first, *chain]
        reason = "requested"
    elif (
        chat_settings.routing_enabled and chat_settings.routing_cheap_model and is_simple(text, chat_settings)
    ):
        chain = [validate_target(chat_settings.routing_cheap_model), *chain]
        reason = "routed to the cheap model (simple request)"
    unique: list[Target] = []
    for target in chain:
        if target not in unique and tenant.allows_model(target.model):
            unique.append(target)
    if not unique:
        raise ApiError(
            "None of the configured models is allowed for this tenant.",
            status_code=403,
            code="model_not_allowed",
        )
    # A chain entry of a provider without credentials is deployment configuration, not the
    # client's doing: it is skipped, never called.
    callable_targets = [target for target in unique if provider_configured(target.provider)]
    if not callable_targets:
        raise ApiError(
            "No provider of this tenant's fallback chain is configured on this deployment.",
            status_code=503,
            code="no_provider_configured",
        )
    return callable_targets, reason


# --- conversations ----------------------------------------------------------------------------------


def conversation_history(*, tenant: Tenant, conversation_id: uuid.UUID) -> list[Message]:
    """The conversation's messages in one query; 404 when it is not this tenant's (or does not exist)."""
    messages = list(
        Message.objects.filter(conversation_id=conversation_id, conversation__tenant=tenant).order_by(
            "created_at", "id"
        )
    )
    if not messages:
        raise NotFoundError("No such conversation.", param="conversation_id")
    return messages


def trim_history(messages: list[Message], budget_tokens: int) -> list[dict[str, str]]:
    """The most recent turns that fit the token budget, oldest first."""
    kept: list[dict[str, str]] = []
    used = 0
    for message in reversed(messages):
        cost = message.tokens or estimate_tokens(message.content)
        if used + cost > budget_tokens:
            break
        kept.append({"role": message.role, "content": message.content})
        used += cost
    return list(reversed(kept))


def conversation_record(
    *,
    tenant: Tenant,
    conversation_id: uuid.UUID | None,
    user: str,
    question: str,
    answer: str,
    usage: Usage,
    request_id: str,
) -> uuid.UUID | None:
    """Stores the turn: two statements, a new conversation's INSERT or the existing one's UPDATE,
    then both messages. Returns the conversation's id, or None when the existing conversation was
    deleted since conversation_history read it: the turn is then not stored, and not refused either,
    since the answer it holds was already charged."""
    with transaction.atomic():
        if conversation_id is None:
            conversation = Conversation.objects.create(
                tenant=tenant, end_user=user, title=" ".join(question.split())[:120]
            )
        else:
            changes: dict[str, Any] = {"updated_at": timezone.now(), **({"end_user": user} if user else {})}
            # The UPDATE locks the row until the messages are in, so conversation_delete (which locks
            # it first) waits for this turn and removes it too; no row updated means a delete came first.
            if not Conversation.objects.filter(tenant=tenant, id=conversation_id).update(**changes):
                return None
            conversation = Conversation(id=conversation_id, tenant=tenant)
        Message.objects.bulk_create(
            [
                Message(
                    conversation=conversation,
                    role="user",
                    content=question,
                    tokens=estimate_tokens(question),
                    request_id=request_id,
                ),
                Message(
                    conversation=conversation,
                    role="assistant",
                    content=answer,
                    tokens=usage.output_tokens,
                    request_id=request_id,
                ),
            ]
        )
    return conversation.id


@transaction.atomic
def conversation_delete(*, tenant: Tenant, conversation_id: uuid.UUID) -> None:
    """Removes the conversation with its messages. The row is locked before the messages are
    collected: a turn being stored (conversation_record) commits first and is removed with the rest;
    without the lock its messages would be missed and the DELETE fail on their foreign key."""
    conversation = Conversation.objects.select_for_update().filter(tenant=tenant, id=conversation_id).first()
    if conversation is None:
        raise NotFoundError("No such conversation.", param="conversation_id")
    conversation.delete()


# --- the pipeline -----------------------------------------------------------------------------------


@dataclass
class Prepared:
    params: ChatParams
    chat_settings: ChatSettings
    messages: list[dict[str, str]]
    targets: list[Target]
    max_tokens: int
    temperature: float | None
    top_p: float | None
    prompt: dict[str, Any] | None
    cache_key: str | None
    estimated_tokens: int  # for the tokens-per-minute limit, corrected after the call
    input_token_bound: int  # what the budget reservation holds: no provider can count more
    citations: list[dict[str, Any]] = field(default_factory=list)
    semantic_key: SemanticKey | None = None  # set when the semantic cache applies to this request
    tokens: TokenReservation | None = None  # taken from this minute's tokens-per-minute allowance


def _take_tokens(tenant: Tenant, prepared: Prepared) -> None:
    prepared.tokens = token_rate_reserve(
        tenant=tenant, tokens=prepared.estimated_tokens + prepared.max_tokens
    )


def _return_tokens(tenant: Tenant, prepared: Prepared | None, used: int) -> None:
    """Replaces the estimate taken before the call by what it used, at once: the next request of
    the tenant must see the real count (deferred, the estimate would refuse it, or admit too many
    when the estimate fell short)."""
    with _returning_tokens(tenant, prepared, used):
        pass


@contextlib.contextmanager
def _returning_tokens(tenant: Tenant, prepared: Prepared | None, used: int) -> Iterator[None]:
    """_return_tokens while the block runs (the settlement): Redis's round trip overlaps the block's."""
    if prepared is None or prepared.tokens is None:
        yield
        return
    reservation, prepared.tokens = prepared.tokens, None
    with token_rate_adjusting(tenant=tenant, reservation=reservation, used=used):
        yield


def _guard_input(
    tenant: Tenant, params: ChatParams, chat_settings: ChatSettings, recorder: TraceRecorder
) -> None:
    text = params.message if params.messages is None else "\n".join(m["content"] for m in params.messages)
    with recorder.span("guard_input") as span:
        if len(text) > chat_settings.max_input_chars:
            span["status"] = "refused"
            raise DomainError(
                f"The input is {len(text)} characters; the limit is {chat_settings.max_input_chars}.",
                param="message",
                code="input_too_large",
            )
        if estimate_tokens(text) > settings.CHAT_MAX_INPUT_TOKENS:
            span["status"] = "refused"
            raise DomainError(
                f"The input is about {estimate_tokens(text)} tokens; the limit is "
                f"{settings.CHAT_MAX_INPUT_TOKENS}.",
                param="message",
                code="input_too_large",
            )
        findings = injection_findings(text) if chat_settings.injection_policy != GuardPolicy.OFF else []
        span.update(policy=chat_settings.injection_policy, injection=findings)
        if findings and chat_settings.injection_policy == GuardPolicy.BLOCK:
            span["status"] = "refused"
            raise DomainError(
                "The input looks like a prompt-injection attempt and this tenant blocks those.",
                param="message",
                code="prompt_injection_detected",
            )


def prepare(*, tenant: Tenant, params: ChatParams, recorder: TraceRecorder) -> Prepared:
    chat_settings = chat_settings_for(tenant=tenant)
    _guard_input(tenant, params, chat_settings, recorder)
    messages: list[dict[str, str]] = []
    prompt_info: dict[str, Any] | None = None
    model_config: dict[str, Any] = {}
    if params.prompt:
        with recorder.span("prompt", prompt=params.prompt) as span:
            resolved = prompt_resolve(
                tenant=tenant,
                name=params.prompt,
                label=params.label,
                version=params.version,
                user=params.user or None,
            )
            rendered = prompt_render(resolved=resolved, variables=params.variables)
            messages = rendered.messages or [{"role": "system", "content": rendered.text or ""}]
            model_config = resolved.version.model_config
            prompt_info = {
                "name": resolved.name,
                "version": resolved.version.number,
                "variant": resolved.variant_id,
            }
            span.update(
                version=resolved.version.number,
                variant=resolved.variant_id,
                experiment=resolved.experiment_id,
            )
            recorder.set(
                prompt_name=resolved.name,
                prompt_version=resolved.version.number,
                prompt_variant=resolved.variant_id,
            )
    # What, besides the question, shapes the answer (the semantic cache must match it exactly).
    instructions = list(messages) + [m for m in params.messages or [] if m["role"] == "system"]
    if params.messages is not None:
        messages += params.messages
    else:
        if params.conversation_id is not None:
            with recorder.span("history") as span:
                history = trim_history(
                    conversation_history(tenant=tenant, conversation_id=params.conversation_id),
                    settings.CHAT_HISTORY_TOKEN_BUDGET,
                )
                span["messages"] = len(history)
            messages += history
        messages.append({"role": "user", "content": params.message})
    max_tokens = params.max_tokens or model_config.get("max_tokens") or settings.CHAT_DEFAULT_MAX_TOKENS
    temperature = params.temperature if params.temperature is not None else model_config.get("temperature")
    top_p = params.top_p if params.top_p is not None else model_config.get("top_p")
    with recorder.span("route") as span:
        targets, reason = resolve_targets(
            tenant=tenant,
            chat_settings=chat_settings,
            model=params.model or model_config.get("model"),
            text=params.message,
        )
        span.update(reason=reason, chain=[target.key for target in targets])
    use_rag = params.rag
    if use_rag is None:
        use_rag = (
            params.endpoint == "chat" and chat_settings.rag_enabled and tenant_has_documents(tenant=tenant)
        )
    low_temperature = temperature is not None and temperature <= settings.CHAT_CACHE_MAX_TEMPERATURE
    single_turn = params.conversation_id is None and (
        params.messages is None or sum(m["role"] in ("user", "assistant") for m in params.messages) == 1
    )
    semantic_wanted = (
        chat_settings.semantic_cache_enabled
        and low_temperature
        and bool(params.message.strip())
        and (single_turn or chat_settings.semantic_cache_multi_turn)
    )
    # The answer depends on the documents as they are now. Their stamp is read before retrieval, so
    # an answer built from documents that change meanwhile is stored under the old stamp, never served.
    documents_stamp = documents_cache.stamp(str(tenant.pk)) if semantic_wanted and use_rag else None
    if documents_stamp is not None and documents_stamp.startswith(UNAVAILABLE_STAMP_PREFIX):
        semantic_wanted = False  # Redis is away: no stamp to trust
    citations = _add_context(tenant, params.message, messages, recorder) if use_rag else []
    # Stop sequences, when there are any, shape the answer too (without, the keys stay as they were).
    stop = [params.stop] if params.stop else []
    cache_key = None
    if chat_settings.cache_enabled and low_temperature:
        material = json.dumps(
            [tenant.pk, targets[0].key, messages, max_tokens, temperature, top_p, *stop], sort_keys=True
        )
        cache_key = "chat:exact:" + hashlib.sha256(material.encode()).hexdigest()
    semantic_key = None
    vector = _semantic_query_vector(tenant, params.message, recorder) if semantic_wanted else None
    # A question without content words has no direction to compare; with or without documents in the
    # prompt the answer differs.
    if vector is not None and np.any(vector):
        shaping = json.dumps([instructions, max_tokens, use_rag, documents_stamp, *stop], sort_keys=True)
        semantic_key = SemanticKey(
            vector,
            targets[0].key,
            prompt_info["name"] if prompt_info else "",
            prompt_info["version"] if prompt_info else None,
            hashlib.sha256(shaping.encode()).hexdigest(),
        )
    return Prepared(
        params,
        chat_settings,
        messages,
        targets,
        max_tokens,
        temperature,
        top_p,
        prompt_info,
        cache_key,
        estimate_message_tokens(messages),
        input_token_bound(messages),
        citations,
        semantic_key,
    )


RAG_INSTRUCTION = (
    "Answer from the numbered context below when it is relevant, and cite the parts you use as [n]. "
    "If the context does not hold the answer, say so."
)


def _add_context(
    tenant: Tenant, query: str, messages: list[dict[str, str]], recorder: TraceRecorder
) -> list[dict[str, Any]]:
    """Puts the best chunks that fit RAG_CONTEXT_TOKENS in a system message before the question;
    returns their citations."""
    with recorder.span("retrieval", k=settings.RAG_TOP_K) as span:
        found = retrieve(tenant_id=tenant.pk, query=query, k=settings.RAG_TOP_K)
        budget = settings.RAG_CONTEXT_TOKENS
        used: list[RetrievedChunk] = []
        parts: list[str] = []
        for chunk in found.chunks:
            part = f"[{len(used) + 1}] {chunk.title} (part {chunk.ordinal + 1}):\n{chunk.text}"
            if estimate_tokens(part) > budget:
                continue
            budget -= estimate_tokens(part)
            used.append(chunk)
            parts.append(part)
        span.update(
            query_ms=round(found.query_ms, 2),
            embed_ms=round(found.embed_ms, 2),
            cached_embedding=found.cached_embedding,
            found=len(found.chunks),
            chunk_ids=[chunk.chunk_id for chunk in used],
            scores=[chunk.score for chunk in used],
        )
    if parts:
        context = f"{RAG_INSTRUCTION}\n\n{CONTEXT_MARKER}\n" + "\n\n".join(parts)
        messages.insert(len(messages) - 1, {"role": "system", "content": context})
    return [chunk.citation() for chunk in used]


def _semantic_query_vector(tenant: Tenant, message: str, recorder: TraceRecorder) -> np.ndarray | None:
    """The question's embedding for the semantic cache; None (no lookup, no store) when the
    embeddings provider fails: the cache is an optimisation, the question is still answered."""
    try:
        return embed_query(message, tenant_id=tenant.pk)[0]
    except EmbeddingUnavailable as exc:
        recorder.add_span(
            "semantic_cache",
            start_ms=recorder.elapsed_ms(),
            duration_ms=0,
            status="skipped",
            reason=str(exc.detail)[:300],
        )
        return None


def _cached_answer(tenant: Tenant, prepared: Prepared, recorder: TraceRecorder) -> dict[str, Any] | None:
    """An answer from the exact cache, else from the semantic cache; None when neither has one."""
    hit = None
    if prepared.cache_key is None:
        recorder.add_span("cache", start_ms=recorder.elapsed_ms(), duration_ms=0, status="skipped")
    else:
        with recorder.span("cache", kind="exact") as span:
            try:
                hit = cache.get(prepared.cache_key)
            except CACHE_ERRORS:
                hit = None
            span["hit"] = hit is not None
        (CACHE_MISSES if hit is None else CACHE_HITS).labels(kind="exact").inc()
    if hit is None and prepared.semantic_key is not None:
        threshold = prepared.chat_settings.semantic_cache_threshold
        with recorder.span("cache", kind="semantic", threshold=threshold) as span:
            match = semantic_cache_lookup(tenant=tenant, key=prepared.semantic_key)
            span.update(similarity=match.similarity, hit=False)
            if match.entry is not None and match.similarity is not None and match.similarity >= threshold:
                entry = match.entry
                span.update(hit=True, entry_id=entry.pk)
                hit = {
                    "answer": entry.answer,
                    "model": entry.served_model,
                    "provider": entry.provider,
                    "input_tokens": entry.input_tokens,
                    "cached_input_tokens": 0,
                    "output_tokens": entry.output_tokens,
                    "citations": entry.citations,
                }
        (CACHE_MISSES if hit is None else CACHE_HITS).labels(kind="semantic").inc()
    return hit


def _serve_from_cache(
    tenant: Tenant, prepared: Prepared, hit: dict[str, Any], recorder: TraceRecorder
) -> ChatResult:
    params = prepared.params
    usage = Usage(hit["input_tokens"], hit["cached_input_tokens"], hit["output_tokens"])
    recorder.set(**trace_text_fields(tenant=tenant, answer_text=hit["answer"]))
    with recorder.span("settle", cached=True):
        usage_record(
            tenant=tenant,
            request_id=params.request_id,
            kind="cache_hit",
            provider=hit["provider"],
            model=hit["model"],
            input_tokens=usage.input_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            output_tokens=usage.output_tokens,
            **_prompt_fields(prepared),
            trace_id=recorder.id,
        )
    return ChatResult(
        params.request_id,
        params.conversation_id,
        hit["answer"],
        hit["model"],
        hit["provider"],
        usage,
        0,
        prepared.prompt,
        recorder.id,
        cached=True,
        citations=hit.get("citations", []),
    )


def _prompt_fields(prepared: Prepared) -> dict[str, Any]:
    prompt = prepared.prompt or {}
    return {
        "prompt_name": prompt.get("name", ""),
        "prompt_version": prompt.get("version"),
        "prompt_variant": prompt.get("variant"),
    }


def _provider_request(prepared: Prepared, target: Target) -> ProviderRequest:
    return ProviderRequest(
        target.model,
        prepared.messages,
        prepared.max_tokens,
        prepared.temperature,
        prepared.top_p,
        prepared.params.stop,
    )


def _reserver(tenant: Tenant, prepared: Prepared, recorder: TraceRecorder):  # type: ignore[no-untyped-def]
    def reserve(target: Target, request: ProviderRequest) -> ReservationHandle:
        with recorder.span("reserve", provider=target.provider, model=target.model):
            return budget_reserve(
                tenant=tenant,
                request_id=prepared.params.request_id,
                provider=target.provider,
                model=target.model,
                prompt_tokens=prepared.input_token_bound,
                max_tokens=request.max_tokens,
            )

    return reserve


def _run_chain(
    tenant: Tenant, prepared: Prepared, recorder: TraceRecorder, call: Callable[[Target, ProviderRequest], T]
) -> Served[T]:
    return run_chain(
        targets=prepared.targets,
        request_for=lambda target: _provider_request(prepared, target),
        reserve=_reserver(tenant, prepared, recorder),
        call=call,
        recorder=recorder,
    )


def _finish(
    tenant: Tenant,
    prepared: Prepared,
    recorder: TraceRecorder,
    *,
    target: Target,
    reservation: ReservationHandle,
    answer: str,
    usage: Usage,
    finish_reason: str,
    attempts: int,
) -> ChatResult:
    """Settle, redact, store the turn, cache the answer."""
    params = prepared.params
    usage = _within_reservation(prepared, usage, target)
    used = usage.input_tokens + usage.cached_input_tokens + usage.output_tokens
    with recorder.span("settle") as span, _returning_tokens(tenant, prepared, used):
        charge = budget_settle(
            handle=reservation,
            input_tokens=usage.input_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            output_tokens=usage.output_tokens,
            trace_id=recorder.id,
            **_prompt_fields(prepared),
        )
        span.update(
            cost_nanos=charge.cost_nanos, charged=charge.entry_id is not None, finish_reason=finish_reason
        )
    conversation_id = params.conversation_id
    if params.messages is None:
        conversation_id = conversation_record(
            tenant=tenant,
            conversation_id=params.conversation_id,
            user=params.user,
            question=params.message,
            answer=answer,
            usage=usage,
            request_id=params.request_id,
        )
    entry = {
        "answer": answer,
        "model": target.model,
        "provider": target.provider,
        "input_tokens": usage.input_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
        "citations": prepared.citations,
    }
    # Both cache keys name the first target: an answer from a fallback (the local model during an
    # outage, say) is not what that target would say, and must not stand in for it once it is back.
    cacheable = finish_reason == "stop" and target == prepared.targets[0]  # whole answers only
    if prepared.cache_key is not None and cacheable:
        background.submit(partial(_exact_cache_store, prepared.cache_key, entry, prepared.chat_settings))
    if prepared.semantic_key is not None and cacheable:
        semantic_cache_store(tenant=tenant, key=prepared.semantic_key, question=params.message, hit=entry)
    recorder.set(
        conversation_id=conversation_id,
        **trace_text_fields(tenant=tenant, answer_text=answer),
        provider=target.provider,
        model=target.model,
        input_tokens=usage.input_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        output_tokens=usage.output_tokens,
        cost_nanos=charge.cost_nanos,
        attempts=attempts,
    )
    return ChatResult(
        params.request_id,
        conversation_id,
        answer,
        target.model,
        target.provider,
        usage,
        charge.cost_nanos,
        prepared.prompt,
        recorder.id,
        cached=False,
        finish_reason=finish_reason,
        citations=prepared.citations,
    )


def _within_reservation(prepared: Prepared, usage: Usage, target: Target) -> Usage:
    """The usage the reservation covered, at most: input within its bound, output within the
    max_tokens sent. A provider reporting more (a server ignoring max_tokens) is charged the bound,
    so a budget is never overspent; the excess is logged for the operator."""
    cached = min(usage.cached_input_tokens, prepared.input_token_bound)
    covered = Usage(
        min(usage.input_tokens, prepared.input_token_bound - cached),
        cached,
        min(usage.output_tokens, prepared.max_tokens),
    )
    if covered != usage:
        logger.warning(
            "%s reported usage %s beyond the reserved bound (input %s, output %s); charged %s",
            target.key,
            usage,
            prepared.input_token_bound,
            prepared.max_tokens,
            covered,
        )
    return covered


def _exact_cache_store(key: str, entry: dict[str, Any], chat_settings: ChatSettings) -> None:
    with contextlib.suppress(*CACHE_ERRORS):
        cache.set(key, entry, chat_settings.cache_ttl_seconds)


def _redact_output(prepared: Prepared, text: str, recorder: TraceRecorder) -> str:
    categories = prepared.chat_settings.redact_output
    with recorder.span("guard_output", categories=categories) as span:
        redacted, counts = redact(text, categories)
        span["redacted"] = dict(counts)
    return redacted


def _start_trace(tenant: Tenant, params: ChatParams) -> TraceRecorder:
    recorder = TraceRecorder(tenant=tenant, request_id=params.request_id, endpoint=params.endpoint)
    recorder.set(
        end_user=params.user,
        conversation_id=params.conversation_id,
        **trace_text_fields(tenant=tenant, request_text=params.message),
    )
    return recorder


def _error_code(error: DomainError | ApiError) -> str:
    if isinstance(error, DomainError):
        return error.code
    codes = error.get_codes()
    return codes if isinstance(codes, str) else ""


def _close_trace(recorder: TraceRecorder, error: Exception | None) -> None:
    if error is None:
        recorder.finish()
    elif isinstance(error, DomainError | ApiError) and 400 <= error.status_code < 499:
        code = _error_code(error)
        recorder.set(refusal_reason=refusal_reason(code))
        recorder.finish(status=TraceStatus.REFUSED, error=str(error))  # refused for the request's own sake
        refusal_count(tenant=recorder.tenant, code=code)
    else:
        recorder.finish(status=TraceStatus.ERROR, error=f"{type(error).__name__}: {error}")


def chat_complete(*, tenant: Tenant, params: ChatParams) -> ChatResult:
    recorder = _start_trace(tenant, params)
    error: Exception | None = None
    prepared: Prepared | None = None
    try:
        prepared = prepare(tenant=tenant, params=params, recorder=recorder)
        hit = _cached_answer(tenant, prepared, recorder)
        if hit is not None:
            recorder.set(cached=True, provider=hit["provider"], model=hit["model"])
            return _serve_from_cache(tenant, prepared, hit, recorder)
        _take_tokens(tenant, prepared)
        served: Served[Completion] = _run_chain(tenant, prepared, recorder, complete_call)
        completion = served.result
        answer = _redact_output(prepared, completion.text, recorder)
        return _finish(
            tenant,
            prepared,
            recorder,
            target=served.target,
            reservation=served.reservation,
            answer=answer,
            usage=completion.usage,
            finish_reason=completion.finish_reason,
            attempts=served.attempts,
        )
    except Exception as exc:
        error = exc
        _return_tokens(tenant, prepared, used=0)  # no call was charged: the minute's tokens come back
        raise
    finally:
        _close_trace(recorder, error)


@dataclass(frozen=True)
class StreamError:
    error: ApiError


class ChatStream:
    """chat_stream's events (deltas, then the ChatResult or a StreamError), and the provider and model
    serving them: known before the first delta goes out, a fallback's included."""

    def __init__(self, events: Iterator[str | ChatResult | StreamError], provider: str, model: str) -> None:
        self.events, self.provider, self.model = events, provider, model

    def __iter__(self) -> ChatStream:
        return self

    def __next__(self) -> str | ChatResult | StreamError:
        return next(self.events)

    def close(self) -> None:
        """Settles the call at once (the client gone): what was delivered is charged."""
        close = getattr(self.events, "close", None)
        if close is not None:
            close()


def chat_stream(*, tenant: Tenant, params: ChatParams) -> ChatStream:
    """Deltas, then the ChatResult. Failing before the first delta raises (the view answers with a
    plain error); failing after it yields StreamError, having charged what was delivered."""
    recorder = _start_trace(tenant, params)
    recorder.set(streamed=True)
    prepared: Prepared | None = None
    try:
        prepared = prepare(tenant=tenant, params=params, recorder=recorder)
        hit = _cached_answer(tenant, prepared, recorder)
        if hit is not None:
            recorder.set(cached=True, provider=hit["provider"], model=hit["model"], time_to_first_token_ms=0)
            result = _serve_from_cache(tenant, prepared, hit, recorder)
            _close_trace(recorder, None)
            return ChatStream(iter([result.answer, result]), result.provider, result.model)
        _take_tokens(tenant, prepared)
        served: Served[OpenStream] = _run_chain(tenant, prepared, recorder, stream_call_factory(recorder))
    except Exception as exc:
        _return_tokens(tenant, prepared, used=0)
        _close_trace(recorder, exc)
        raise
    recorder.set(time_to_first_token_ms=served.result.opened_at_ms)
    relay = _relay(tenant, prepared, recorder, served)
    next(relay)  # to its first (empty) yield, inside the block that settles when the stream is closed
    events: Iterator[str | ChatResult | StreamError] = relay  # type: ignore[assignment]  # all events now
    return ChatStream(events, served.target.provider, served.target.model)


def _relay(
    tenant: Tenant, prepared: Prepared, recorder: TraceRecorder, served: Served[OpenStream]
) -> Iterator[str | ChatResult | StreamError | None]:
    """The events after the reservation; chat_stream advances it past the first, empty yield. So a
    caller that closes it before reading anything (the client gone at once) still settles it; a
    generator closed before it started would run none of its code."""
    redactor = StreamRedactor(prepared.chat_settings.redact_output)
    delivered: list[str] = []
    usage: Usage | None = None
    finish_reason = "stop"
    failure: ApiError | None = None
    stream_started = recorder.elapsed_ms()

    def settle() -> ChatResult:
        return _settle_stream(
            tenant,
            prepared,
            recorder,
            served,
            delivered,
            usage,
            finish_reason,
            failure,
            stream_started,
            redactor,
        )

    settled = False
    try:
        yield None
        try:
            for event in served.result.events():
                if isinstance(event, Usage):
                    usage = event
                    continue
                if isinstance(event, Finish):
                    finish_reason = event.reason
                    continue
                delivered.append(event)
                text = redactor.feed(event)
                if text:
                    yield text
        except Exception as exc:  # the provider failed after the first token: end with an error event
            failure = ApiError(
                f"The provider stream broke off: {exc}", status_code=502, code="stream_interrupted"
            )
        tail = redactor.flush()
        if tail:
            yield tail
        settled = True  # once tried: a failing settlement is not run again when the client leaves
        end: ChatResult | StreamError = _settled_or_error(settle)
        yield StreamError(failure) if failure else end
    except GeneratorExit:  # the client went away at any yield: charge what was generated, then stop
        if not settled:
            if not delivered and isinstance(served.result.first, str):
                delivered.append(served.result.first)  # closed at once: the provider sent this much
            _close_provider_stream(served.result)
            failure = ApiError("The client disconnected.", status_code=499, code="client_disconnected")
            settle()
        raise


def _settled_or_error(settle: Callable[[], ChatResult]) -> ChatResult | StreamError:
    """The stream's last event whatever happens after the provider is done: a client waiting for
    `done` or `error` must get one of them, not a response cut off by an exception."""
    try:
        return settle()
    except Exception:
        logger.exception("a streamed answer could not be settled or stored")
        return StreamError(ApiError("Internal server error.", status_code=500, code="server_error"))


def _close_provider_stream(stream: OpenStream) -> None:
    """Closes the provider's response now rather than whenever the garbage collector gets to it."""
    close = getattr(stream.rest, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):  # the client is gone; the settlement must still run
            close()


def _settle_stream(
    tenant: Tenant,
    prepared: Prepared,
    recorder: TraceRecorder,
    served: Served[OpenStream],
    delivered: list[str],
    usage: Usage | None,
    finish_reason: str,
    failure: ApiError | None,
    stream_started: float,
    redactor: StreamRedactor,
) -> ChatResult:
    """Charges the stream once: the provider's final usage, or what we counted when it was cut.
    `finish_reason` is the provider's; with a `failure` the result's is "error"."""
    recorder.add_span(
        "stream",
        start_ms=stream_started,
        duration_ms=recorder.elapsed_ms() - stream_started,
        status="error" if failure else "ok",
        redacted=dict(redactor.counts),
        usage_source="provider" if usage else "counted",
    )
    answer = "".join(delivered)
    if usage is None:
        usage = Usage(prepared.estimated_tokens, 0, estimate_tokens(answer))
    error: Exception | None = failure
    try:
        return _finish(
            tenant,
            prepared,
            recorder,
            target=served.target,
            reservation=served.reservation,
            answer=redact(answer, prepared.chat_settings.redact_output)[0],
            usage=usage,
            finish_reason="error" if failure else finish_reason,
            attempts=served.attempts,
        )
    except Exception as exc:
        error = exc
        budget_release(handle=served.reservation)
        raise
    finally:
        _close_trace(recorder, error)
