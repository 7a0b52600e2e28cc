from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from tenants.errors import is_api_path, json_error_response

DOCUMENT_UPLOAD_PATH = "/api/v1/documents"


def document_upload_bytes_limit() -> int:
    """The largest body a document upload may declare. JSON escapes text (up to 6 bytes a character),
    so this is far above RAG_MAX_UPLOAD_BYTES, which the upload view applies to the document itself."""
    return 6 * settings.RAG_MAX_UPLOAD_BYTES + 65_536


def request_bytes_limit(request: HttpRequest) -> int:
    if request.method == "POST" and request.path_info.rstrip("/") == DOCUMENT_UPLOAD_PATH:
        return max(settings.API_MAX_REQUEST_BYTES, document_upload_bytes_limit())
    return settings.API_MAX_REQUEST_BYTES


class ApiRequestSizeLimitMiddleware:
    """413 for API bodies over API_MAX_REQUEST_BYTES (document uploads: their own limit), before
    anything reads them."""

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
            limit = request_bytes_limit(request)
            if length > limit:
                return json_error_response(
                    413,
                    f"Request body is {length} bytes; the limit is {limit} bytes.",
                    code="request_too_large",
                )
        return self.get_response(request)
