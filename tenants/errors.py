"""One JSON error shape for the whole API, OpenAI-compatible:

    {"error": {"type": ..., "message": ..., "param": ..., "code": ...}}

Validation errors add "errors": every field problem as {"param", "message", "code"}.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import RedisError
from rest_framework import exceptions, status
from rest_framework.response import Response

logger = logging.getLogger(__name__)

API_PATH_PREFIXES = ("/api/", "/v1/")
# What the database driver raises when PostgreSQL cannot be reached or dropped the connection (also a
# statement cancelled by a timeout): the request was fine, the service is not, for now.
DATABASE_UNAVAILABLE_ERRORS = (OperationalError, InterfaceError)
DATABASE_RETRY_AFTER_SECONDS = 5
# What a cache call raises when Redis is down or slow (django-redis wraps some, re-raises others).
CACHE_ERRORS = (RedisError, ConnectionInterrupted)

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "budget_exceeded",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    406: "invalid_request_error",
    409: "conflict_error",
    413: "request_too_large",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class DomainError(Exception):
    """A business rule refused the request. Services raise these; the API turns them into 4xx."""

    status_code = 400
    code = "invalid"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code:
            self.code = code


class ConflictError(DomainError):
    status_code = 409
    code = "conflict"


class NotFoundError(DomainError):
    status_code = 404
    code = "not_found"


class ForbiddenError(DomainError):
    status_code = 403
    code = "forbidden"


class ApiError(exceptions.APIException):
    """An API error with an explicit type/code and extra response headers (Retry-After...)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.param = param
        self.headers = headers or {}


def error_body(status_code: int, message: str, *, param: str | None = None, code: str | None = None) -> dict:
    error_type = ERROR_TYPES.get(status_code, "api_error" if status_code >= 500 else "invalid_request_error")
    return {"error": {"type": error_type, "message": message, "param": param, "code": code}}


def flatten_validation_detail(detail: Any, path: str = "") -> list[dict[str, str | None]]:
    """DRF's nested {"field": ["msg"]} structure as a flat list of {"param", "message", "code"}."""
    items: list[dict[str, str | None]] = []
    if isinstance(detail, dict):
        for key, value in detail.items():
            if key in ("non_field_errors", "__all__"):
                child = path
            else:
                child = f"{path}.{key}" if path else str(key)
            items.extend(flatten_validation_detail(value, child))
        return items
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            child = f"{path}.{index}" if isinstance(value, dict | list) else path
            items.extend(flatten_validation_detail(value, child))
        return items
    return [{"param": path or None, "message": str(detail), "code": getattr(detail, "code", None)}]


def validation_response(detail: Any) -> Response:
    errors = flatten_validation_detail(detail)
    first = errors[0] if errors else {"param": None, "message": "Invalid request.", "code": "invalid"}
    message = f"{first['param']}: {first['message']}" if first["param"] else str(first["message"])
    body = error_body(400, message, param=first["param"], code=first["code"])
    body["error"]["errors"] = errors
    return Response(body, status=400)


def service_unavailable_response(exc: Exception, context: dict[str, Any]) -> Response:
    """503 with Retry-After; what failed (hosts, socket paths) goes to the log, not to the client."""
    request = context.get("request")
    logger.error(
        "database unavailable during %s %s",
        getattr(request, "method", "?"),
        getattr(request, "path", "?"),
        exc_info=exc,
    )
    return Response(
        error_body(503, "The service is temporarily unavailable; retry shortly.", code="service_unavailable"),
        status=503,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DATABASE_UNAVAILABLE_ERRORS):
        return service_unavailable_response(exc, context)
    if isinstance(exc, DomainError):
        return Response(
            error_body(exc.status_code, exc.message, param=exc.param, code=exc.code), status=exc.status_code
        )
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        return validation_response(detail)
    if isinstance(exc, exceptions.ValidationError):
        return validation_response(exc.detail)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    # Imported here: rest_framework.views loads the DRF settings, which import our authentication class.
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    codes = exc.get_codes()
    code = codes if isinstance(codes, str) else None
    response.data = error_body(
        response.status_code, str(exc.detail), param=getattr(exc, "param", None), code=code
    )
    for name, value in getattr(exc, "headers", {}).items():
        response[name] = value
    return response


def is_api_path(path: str) -> bool:
    return path.startswith(API_PATH_PREFIXES)


def json_error_response(status_code: int, message: str, *, code: str | None = None) -> JsonResponse:
    return JsonResponse(error_body(status_code, message, code=code), status=status_code)


def api_not_found_response(request: HttpRequest) -> JsonResponse:
    return json_error_response(status.HTTP_404_NOT_FOUND, f"No route for {request.path}.", code="not_found")


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    """DEBUG off only: with DEBUG on, Django answers its technical page instead, which
    tenants.middleware.ApiNotFoundMiddleware turns into this JSON on API paths."""
    if is_api_path(request.path):
        return api_not_found_response(request)
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path):
        return json_error_response(500, "Internal server error.", code="server_error")
    return defaults.server_error(request)


def handler400(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api_path(request.path):
        return json_error_response(400, "Bad request.", code="bad_request")
    return defaults.bad_request(request, exception)
