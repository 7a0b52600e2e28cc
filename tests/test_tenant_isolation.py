"""Walks every API URL pattern that addresses an object and proves another tenant gets 404.

A new endpoint with a path parameter fails this test until it registers a factory in
OBJECT_FACTORIES below, so no object endpoint ships without its cross-tenant check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from billing.models import Invoice
from billing.services import invoice_finalize, invoice_generate
from chat.documents import document_create
from chat.models import Chunk, Conversation, Document, Message
from monitoring.models import Feedback, Trace
from monitoring.services import TraceRecorder
from prompts.models import PromptTemplate
from prompts.services import experiment_start, prompt_template_create, prompt_version_create
from tenants.models import ApiKey, Scope, Tenant
from tenants.services import api_key_create
from tests.billing.conftest import last_month, usage_record_at
from tests.conftest import client_with_key

HTTP_METHODS = ["get", "post", "put", "patch", "delete"]
State = Callable[[], Any]


def _api_key(tenant: Tenant) -> tuple[dict[str, str], State]:
    api_key, _ = api_key_create(tenant=tenant, name="victim", scopes=[Scope.CHAT], actor="test")
    return {"id": api_key.public_id}, lambda: ApiKey.objects.filter(pk=api_key.pk).values().get()


def _prompt_state(template: PromptTemplate) -> State:
    def state() -> Any:
        return (
            PromptTemplate.objects.filter(pk=template.pk).values().get(),
            list(template.versions.values_list("number", flat=True)),
            list(template.labels.values_list("name", "version_id")),
            list(template.experiments.values_list("id", "status")),
        )

    return state


def _prompt(tenant: Tenant) -> tuple[dict[str, str], State]:
    template = prompt_template_create(
        tenant=tenant, name="secret-sauce", kind="text", text="{{ q }}", actor="t"
    )
    return {"name": template.name}, _prompt_state(template)


def _prompt_label(tenant: Tenant) -> tuple[dict[str, str], State]:
    kwargs, state = _prompt(tenant)
    return {**kwargs, "label": "production"}, state


def _prompt_experiment(tenant: Tenant) -> tuple[dict[str, str], State]:
    template = prompt_template_create(
        tenant=tenant, name="secret-ab", kind="text", text="a {{ q }}", actor="t"
    )
    prompt_version_create(template=template, text="b {{ q }}", actor="t")
    experiment = experiment_start(template=template, variants=[(1, 50), (2, 50)], actor="t")
    return {"name": template.name, "experiment_id": str(experiment.pk)}, _prompt_state(template)


def _invoice(tenant: Tenant) -> tuple[dict[str, str], State]:
    usage_record_at(tenant, last_month(), request_id="secret", provider="local", model="local")
    invoice = invoice_finalize(
        invoice=invoice_generate(tenant=tenant, period=last_month(), actor="t"), actor="t"
    )
    return {"pk": str(invoice.pk)}, lambda: Invoice.objects.filter(pk=invoice.pk).values().get()


def _conversation(tenant: Tenant) -> tuple[dict[str, str], State]:
    conversation = Conversation.objects.create(tenant=tenant, title="secret")
    Message.objects.create(conversation=conversation, role="user", content="secret question")
    return {"pk": str(conversation.pk)}, lambda: (
        Conversation.objects.filter(pk=conversation.pk).values().get(),
        list(Message.objects.filter(conversation=conversation).values_list("content", flat=True)),
    )


def _document(tenant: Tenant) -> tuple[dict[str, str], State]:
    document, _ = document_create(
        tenant=tenant, content=b"secret plans", content_type="text/plain", title="secret", enqueue=False
    )
    Document.objects.filter(pk=document.pk).update(status="ready")
    Chunk.objects.create(
        tenant=tenant, document=document, ordinal=0, text="secret plans", token_count=3, embedding=[1] * 384
    )
    return {"pk": str(document.pk)}, lambda: (
        Document.objects.filter(pk=document.pk).values().get(),
        list(Chunk.objects.filter(document=document).values_list("id", "text")),
    )


def _trace(tenant: Tenant) -> tuple[dict[str, str], State]:
    recorder = TraceRecorder(tenant=tenant, request_id="secret", endpoint="chat")
    recorder.set(request_text="secret question", answer_text="secret answer")
    recorder.finish()
    Feedback.objects.create(tenant=tenant, trace_id=recorder.id, score=1, comment="secret")
    return {"pk": str(recorder.id)}, lambda: (
        Trace.objects.filter(pk=recorder.id).values().get(),
        list(Feedback.objects.filter(trace_id=recorder.id).values()),
    )


# route name -> creates an object owned by the tenant; returns the URL kwargs and a snapshot of its state.
OBJECT_FACTORIES: dict[str, Callable[[Tenant], tuple[dict[str, str], State]]] = {
    "api-key-detail": _api_key,
    "api-key-revoke": _api_key,
    "api-key-rotate": _api_key,
    "prompt-detail": _prompt,
    "prompt-render": _prompt,
    "prompt-versions": _prompt,
    "prompt-experiments": _prompt,
    "prompt-label": _prompt_label,
    "prompt-experiment-stop": _prompt_experiment,
    "prompt-experiment-results": _prompt_experiment,
    "prompt-experiment-promote": _prompt_experiment,
    "invoice-detail": _invoice,
    "invoice-pdf": _invoice,
    "invoice-csv": _invoice,
    "invoice-html": _invoice,
    "conversation-detail": _conversation,
    "document-detail": _document,
    "document-reingest": _document,
    "trace-detail": _trace,
}


# Valid bodies, so a 404 cannot hide behind a 400 for bad input.
BODIES: dict[str, dict[str, Any]] = {
    "prompt-render": {"variables": {"q": "x"}},
    "prompt-versions": {"text": "stolen {{ q }}"},
    "prompt-experiments": {"variants": [{"version": 1, "weight": 100}]},
    "prompt-label": {"version": 1},
    "prompt-experiment-promote": {"variant": 1},
}


def iter_patterns(patterns: list[Any], prefix: str = "") -> list[tuple[str, URLPattern]]:
    found = []
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            found.extend(iter_patterns(entry.url_patterns, route))
        elif isinstance(entry, URLPattern):
            found.append((route, entry))
    return found


def allowed_methods(pattern: URLPattern) -> list[str]:
    callback = pattern.callback
    actions = getattr(callback, "actions", None)
    if actions:
        return [method for method in HTTP_METHODS if method in actions]
    view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    return [method for method in HTTP_METHODS if view_class is not None and hasattr(view_class, method)]


def object_routes() -> list[tuple[str, URLPattern]]:
    routes = []
    for route, pattern in iter_patterns(get_resolver().url_patterns):
        is_api = route.startswith(("api/v1/", "^api/v1/", "v1/", "^v1/"))
        if is_api and pattern.pattern.regex.groupindex:
            routes.append((route, pattern))
    return routes


def test_every_object_route_has_an_ownership_factory():
    missing = [
        f"{route} (name={pattern.name})"
        for route, pattern in object_routes()
        if pattern.name not in OBJECT_FACTORIES
    ]
    assert not missing, f"register these in OBJECT_FACTORIES: {missing}"
    assert object_routes(), "the walk found no object routes at all"


def test_other_tenants_objects_are_404_on_every_method(tenant, other_tenant):
    _, intruder_raw = api_key_create(tenant=other_tenant, name="intruder", scopes=[Scope.ADMIN], actor="test")
    intruder = client_with_key(intruder_raw)
    checked = 0
    for _, pattern in object_routes():
        for method in allowed_methods(pattern):
            with transaction.atomic():
                kwargs, state = OBJECT_FACTORIES[pattern.name](tenant)
                before = state()
                url = reverse(pattern.name, kwargs=kwargs)
                response = getattr(intruder, method)(url, BODIES.get(pattern.name, {}), format="json")
                assert response.status_code == 404, f"{method.upper()} {url} gave {response.status_code}"
                assert response.json()["error"]["type"] == "not_found_error"
                assert state() == before
                transaction.set_rollback(True)
            checked += 1
    assert checked >= len(OBJECT_FACTORIES)
