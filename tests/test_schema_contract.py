"""The OpenAPI schema is the contract: schemathesis calls every operation it documents, with data the
schema allows and data it forbids, and checks each answer against it (every built-in check: no 5xx,
documented status codes, content types, headers and bodies, forbidden input refused, allowed input
accepted, auth enforced).

Bounded and derandomized so the run is deterministic and fits in `make test`: a fixed number of
generated examples per operation, on top of the schema's examples and its coverage cases (boundary
values, each constraint broken once).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any, cast

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import override_settings
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode

from billing.serializers import MAX_USAGE_DAYS
from billing.services import priced_models
from config.wsgi import application
from tenants.models import ApiKey, Tenant
from tenants.services import tenant_create
from tests.conftest import KeyFactory

# Revoking or rotating the key that authenticates the run would fail every later call: those two
# run in their own test, each call authenticated by a key of its own.
KEY_LIFECYCLE = r"^/api/v1/keys/\{id\}/(revoke|rotate)/?$"
MAX_EXAMPLES = 25
CHAT_PATHS = ("/api/v1/chat", "/v1/chat/completions")
WSGI_HOST = "localhost"  # the Host schemathesis sends to a WSGI app


@pytest.fixture
def _wsgi_in_test_transaction(db: None) -> Iterator[None]:
    """Schemathesis calls the WSGI app itself, whose request signals would close the connection that
    holds the test's transaction (Django's test client disconnects them the same way)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def contract_tenant(_wsgi_in_test_transaction: None, settings: Any) -> Tenant:
    settings.ALLOWED_HOSTS = [WSGI_HOST]
    # Hundreds of calls in a minute: the rate limits are tested elsewhere, here they would only
    # turn the run into 429s.
    return tenant_create(
        name="Contract",
        slug="contract",
        actor="test",
        requests_per_minute=1_000_000,
        tokens_per_minute=100_000_000,
    )


@pytest.fixture
def contract_key(contract_tenant: Tenant, make_key: KeyFactory) -> str:
    _, raw_key = make_key(contract_tenant)
    return raw_key


def _bounded(test: Any) -> Any:
    return hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )(test)


# Loaded at import, as served: one test per operation, each with its own clean Redis.
with override_settings(ALLOWED_HOSTS=[WSGI_HOST]):
    schema = schemathesis.openapi.from_wsgi("/api/schema/", application)
# Unknown query parameters are ignored, as HTTP APIs do: not a negative case.
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], allow_extra_parameters=False
)
schema.config.output.sanitization.update(enabled=False)  # show max_tokens and the test's own keys


def _is_positive(case: schemathesis.Case) -> bool:
    return case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE


def _follow_data_rules(case: schemathesis.Case) -> None:
    """Makes a positive case follow the rules that depend on data or on today, which a static schema
    cannot state (their descriptions do): which models have a price (an operator's table), that a key
    expires in the future, that a usage range ends by tomorrow and spans at most 366 days; and what
    OpenAPI 3.0 cannot say: that variable names are identifiers, what bytes an upload holds. A negative
    case is left as drawn: the API must still refuse it."""
    if not _is_positive(case):
        return
    body: dict[str, Any] | None = cast(dict[str, Any], case.body) if isinstance(case.body, dict) else None
    if case.path in CHAT_PATHS and body is not None and "model" in body:
        priced = {name for _, name in priced_models()}
        if body["model"] not in priced:
            body["model"] = "local"
    if case.path.rstrip("/") == "/api/v1/keys" and body is not None and body.get("expires_at"):
        expires_at = parse_datetime(body["expires_at"])
        if expires_at is None or expires_at <= timezone.now():
            body["expires_at"] = None
    if (
        case.path.startswith("/api/v1/prompts")
        and body is not None
        and isinstance(body.get("variables"), dict)
    ):
        # variable names are identifiers, which OpenAPI 3.0 cannot say of property names
        body["variables"] = {f"v{index}": value for index, value in enumerate(body["variables"].values())}
    if body is not None and "file" in body:
        # Any bytes are a binary to the schema; the upload takes text, or a PDF's bytes after "%PDF-".
        # These are both, whichever of the documented types the part declares.
        body["file"] = b"%PDF-1.4 or plain text: a document as an upload holds.\n"
    if case.path.rstrip("/") in ("/api/v1/feedback", "/api/v1/traces") and case.query:
        # A time range ends after it starts (said in the parameters' descriptions), and a cursor is
        # only ever one the API handed out in a `next` or `previous` link, not any string.
        after = parse_datetime(str(case.query.get("created_after") or ""))
        before = parse_datetime(str(case.query.get("created_before") or ""))
        inverted = after is not None and before is not None and before <= after
        dropped = {"cursor", *(["created_before"] if inverted else [])}
        case.query = {k: v for k, v in case.query.items() if k not in dropped}
    if case.path == "/api/v1/usage" and case.query:
        today = timezone.localdate()
        start = parse_date(str(case.query.get("from") or "")) or today.replace(day=1)
        end = parse_date(str(case.query.get("to") or "")) or today
        if not (date(2000, 1, 1) <= start <= end <= today + timedelta(days=1)) or (
            end - start > timedelta(days=MAX_USAGE_DAYS)
        ):
            case.query = {k: v for k, v in case.query.items() if k not in ("from", "to")}


@schema.exclude(path_regex=KEY_LIFECYCLE).parametrize()
@_bounded
def test_api_conforms_to_its_schema(case: schemathesis.Case, contract_key: str) -> None:
    _follow_data_rules(case)
    case.call_and_validate(headers={"Authorization": f"Bearer {contract_key}"})


@schema.include(path_regex=KEY_LIFECYCLE).parametrize()
@_bounded
def test_key_revoke_and_rotate_conform_to_the_schema(
    case: schemathesis.Case, contract_tenant: Tenant, make_key: KeyFactory
) -> None:
    _, raw_key = make_key(contract_tenant, name="caller")
    if _is_positive(case):
        # A generated id names no key: a real one makes the call succeed, so the success answer
        # is checked too.
        target: ApiKey = make_key(contract_tenant, name="target")[0]
        case.path_parameters = {**(case.path_parameters or {}), "id": target.public_id}
    case.call_and_validate(headers={"Authorization": f"Bearer {raw_key}"})


# --- what the run found, each pinned by a plain test ---------------------------------------------


@pytest.mark.parametrize("query", ["offset=null", "offset=-1", "limit=0", "limit=201", "limit=x"])
def test_pagination_parameters_out_of_schema_are_400(api_client, query):
    response = api_client.get(f"/api/v1/keys?{query}")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == query.split("=")[0]


def test_pagination_parameters_in_range_page(api_client):
    response = api_client.get("/api/v1/keys?limit=1&offset=0")
    assert response.status_code == 200
    assert len(response.json()["results"]) == 1


def test_empty_query_value_is_not_an_omitted_one(api_client):
    response = api_client.get("/api/v1/documents?status=")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "status"


def test_max_length_counts_the_characters_sent(api_client):
    """DRF trimmed "\\x1c" (whitespace to str.strip) before counting: 301 characters passed 300."""
    response = api_client.post("/api/v1/documents", {"title": "\x1c" + "t" * 300, "text": "x"}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "title"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/api/v1/documents", {"text": 0}, "text"),
        ("/api/v1/keys", {"name": 5, "scopes": ["chat"]}, "name"),
        ("/api/v1/chat", {"message": "hi", "stream": "yes"}, "stream"),
        ("/api/v1/chat", {"message": "hi", "max_tokens": "5"}, "max_tokens"),
        ("/api/v1/chat", {"message": "hi", "conversation_id": 0}, "conversation_id"),
    ],
)
def test_json_values_of_another_type_are_400(api_client, path, body, param):
    response = api_client.post(path, body, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] == param


def test_options_answers_without_serializer_forms(api_client):
    response = api_client.options("/api/v1/documents")
    assert response.status_code == 200
    assert "actions" not in response.json()


def test_schema_documents_errors_lists_and_streams(db, client):
    schema = client.get("/api/schema/?format=json").json()
    paths = schema["paths"]
    error_ref = {"$ref": "#/components/schemas/Error"}
    for code in ("400", "401", "403", "404", "429"):
        response = paths["/api/v1/keys/{id}/"]["get"]["responses"][code]
        assert response["content"]["application/json"]["schema"] == error_ref
    assert "Retry-After" in paths["/api/v1/me"]["get"]["responses"]["429"]["headers"]
    prompts = paths["/api/v1/prompts/"]["get"]["responses"]["200"]["content"]["application/json"]
    assert prompts["schema"] == {"$ref": "#/components/schemas/PromptList"}
    for path in ("/api/v1/chat", "/v1/chat/completions"):
        assert "text/event-stream" in paths[path]["post"]["responses"]["200"]["content"]
    messages = schema["components"]["schemas"]["ChatCompletionRequestRequest"]["properties"]["messages"]
    assert messages["minItems"] == 1
    assert schema["components"]["schemas"]["ChatRequestRequest"]["not"] == {"required": ["label", "version"]}


def test_document_search_takes_json_only(api_client):
    """Multipart is for uploads; the search took it too, though documented as JSON only."""
    response = api_client.post("/api/v1/documents/search", {"query": "x"}, format="multipart")
    assert response.status_code == 415
    assert api_client.post("/api/v1/documents/search", {"query": "x"}, format="json").status_code == 200


def test_lists_with_items_conform_to_the_schema(contract_key):
    """The generated runs mostly see empty lists; these hold one item each, checked the same way."""
    auth = {"Authorization": f"Bearer {contract_key}"}

    def call(method: str, path: str, **data: Any) -> Any:
        return schema[path][method].Case(**data).call_and_validate(headers=auth)

    call("POST", "/api/v1/chat", body={"message": "hi"}, media_type="application/json")
    body = {"title": "Notes", "text": "Some notes."}
    call("POST", "/api/v1/documents/", body=body, media_type="application/json")
    for path in ("/api/v1/conversations/", "/api/v1/documents/", "/api/v1/keys/"):
        assert call("GET", path).json()["results"], path
    conversation = call("GET", "/api/v1/conversations/").json()["results"][0]
    call("GET", "/api/v1/conversations/{id}/", path_parameters={"id": conversation["id"]})
