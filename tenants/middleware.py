from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from tenants.errors import is_api_path, json_error_response


class ApiRequestSizeLimitMiddleware:
    """413 for API bodies over API_MAX_REQUEST_BYTES, before anything reads them."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if is_api_path(request.path):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return json_error_response(
                    400, "Invalid Content-Length header.", code="invalid_content_length"
                )
            limit = settings.API_MAX_REQUEST_BYTES
            if length > limit:
                return json_error_response(
                    413,
                    f"Request body is {length} bytes; the limit is {limit} bytes.",
                    code="request_too_large",
                )
        return self.get_response(request)
