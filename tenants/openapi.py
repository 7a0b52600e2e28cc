"""The OpenAPI schema's AutoSchema: every operation also documents the errors it can answer, in the
API's one error shape (tenants/errors.py), so that the schema is the whole contract a client codes to.

Which errors an operation documents follows from what it is:
- any API operation: 400 (a malformed request: bad JSON, bad Content-Length, invalid input);
- authenticated: 401 (missing or invalid key), 403 (scope, disabled tenant), 429 (rate limits,
  with Retry-After);
- with path parameters: 404 (no such object for this tenant);
- with a request body: 413 (over the size limit) and 415 (not JSON, or the multipart an upload takes);
- what else a view answers (409, 422, 402...) it declares itself with `error_responses(...)`.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ComponentRegistry
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

from tenants.errors import is_api_path
from tenants.serializers import NO_NUL, ErrorSerializer

ERROR_DESCRIPTIONS = {
    400: "Invalid request: the body, query or headers break a rule (`error.errors` lists each field).",
    401: "Missing, malformed, unknown, expired or revoked API key.",
    402: "The tenant's budget for this month cannot cover the request.",
    403: "The key lacks the scope, the tenant is disabled, or the model or resource is not allowed.",
    404: "No such object for this tenant.",
    409: "Conflicts with the object's current state.",
    413: "The request body is over the size limit.",
    415: "Unsupported Content-Type.",
    422: "The Idempotency-Key was used with another request.",
    429: "A rate limit or quota is exhausted; retry after Retry-After seconds.",
    502: "Every provider of the fallback chain failed.",
    503: "A dependency (the rate-limit or idempotency store, the embedder) is unavailable.",
}

RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds until the request may succeed.",
        "schema": {"type": "integer", "minimum": 0},
    }
}


def error_responses(*status_codes: int) -> dict[int, OpenApiResponse]:
    """`responses` entries of `@extend_schema` for errors particular to one view."""
    return {
        code: OpenApiResponse(response=ErrorSerializer, description=ERROR_DESCRIPTIONS[code])
        for code in status_codes
    }


class ApiAutoSchema(AutoSchema):
    def get_operation(
        self, path: str, path_regex: str, path_prefix: str, method: str, registry: ComponentRegistry
    ) -> dict[str, Any] | None:
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None or not is_api_path(path):
            return operation
        responses: dict[str, Any] = operation["responses"]
        for code in self._error_status_codes(operation):
            responses.setdefault(str(code), self._error_response(code))
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def _map_serializer_field(
        self, field: Any, direction: str, bypass_extensions: bool = False
    ) -> dict[str, Any]:
        schema: dict[str, Any] = super()._map_serializer_field(field, direction, bypass_extensions)
        if direction != "request":
            return schema
        if isinstance(field, serializers.ListSerializer) and not field.allow_empty:
            schema.setdefault("minItems", 1)
        if isinstance(field, serializers.SlugField) and not field.allow_unicode:
            schema.setdefault("pattern", "^[-a-zA-Z0-9_]+$")  # DRF's slug_regex, which spectacular omits
        if isinstance(field, serializers.CharField) and schema.get("type") == "string":
            # DRF refuses NUL in every string (ProhibitNullCharactersValidator)
            schema.setdefault("pattern", NO_NUL)
        return schema

    def _insert_field_validators(self, field: Any, schema: dict[str, Any]) -> None:
        super()._insert_field_validators(field, schema)
        collapsed = _blank_without_one_of(schema)
        if collapsed is not schema:
            schema.clear()
            schema.update(collapsed)

    def _map_basic_serializer(self, serializer: Any, direction: str) -> dict[str, Any]:
        """Adds a serializer's `schema_rules`: what its validate() enforces across fields, in JSON Schema."""
        schema: dict[str, Any] = super()._map_basic_serializer(serializer, direction)
        rules = getattr(serializer, "schema_rules", None)
        if direction == "request" and rules:
            properties = {**schema.get("properties", {}), **rules.get("properties", {})}
            schema.update({**rules, "properties": properties})
        return schema

    @staticmethod
    def _error_status_codes(operation: dict[str, Any]) -> list[int]:
        codes = [400]
        if operation.get("security"):
            codes += [401, 403, 429]
        if any(parameter["in"] == "path" for parameter in operation.get("parameters", [])):
            codes.append(404)
        if "requestBody" in operation:
            codes += [413, 415]
        return codes

    def _error_response(self, code: int) -> dict[str, Any]:
        component = self.resolve_serializer(ErrorSerializer, "response")
        response: dict[str, Any] = {
            "description": ERROR_DESCRIPTIONS[code],
            "content": {"application/json": {"schema": component.ref}},
        }
        if code == 429:
            response["headers"] = RETRY_AFTER
        return response


def _blank_without_one_of(schema: dict[str, Any]) -> dict[str, Any]:
    """Spectacular gives an allow_blank string `oneOf: [the string, maxLength 0]`. When the string
    already takes "" (no minLength), "" matches both, which oneOf refuses: the string alone says it."""
    alternatives = schema.get("oneOf")
    if (
        isinstance(alternatives, list)
        and len(alternatives) == 2
        and alternatives[1] == {"type": "string", "maxLength": 0}
        and not alternatives[0].get("minLength")
    ):
        rest = {key: value for key, value in schema.items() if key != "oneOf"}
        return {**alternatives[0], **rest}
    return schema
