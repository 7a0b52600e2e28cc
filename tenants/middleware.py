from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from tenants.errors import api_not_found_response, is_api_path, json_error_response

DOCUMENT_UPLOAD_PATH = "/api/v1/documents"
# Outside the API (the admin's forms): Django's default DATA_UPLOAD_MAX_MEMORY_SIZE, which settings
# raise to the largest API limit. The admin login reads its form before anyone is authenticated.
NON_API_MAX_REQUEST_BYTES = 2_621_440
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def document_upload_bytes_limit() -> int:
    """The largest body a document upload may declare. JSON escapes text (up to 6 bytes a character),
    so this is far above RAG_MAX_UPLOAD_BYTES, which the upload view applies to the document itself.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE is computed the same way."""
    return 6 * settings.RAG_MAX_UPLOAD_BYTES + 65_536


def request_bytes_limit(request: HttpRequest) -> int:
    if not is_api_path(request.path):
        return NON_API_MAX_REQUEST_BYTES
    if request.method == "POST" and request.path_info.rstrip("/") == DOCUMENT_UPLOAD_PATH:
        return max(settings.API_MAX_REQUEST_BYTES, document_upload_bytes_limit())
    return settings.API_MAX_REQUEST_BYTES


class RequestSizeLimitMiddleware:
    """413 for bodies over their path's limit (API_MAX_REQUEST_BYTES; document uploads: their own),
    before anything reads them. Django's DATA_UPLOAD_MAX_MEMORY_SIZE is set to the largest of these
    limits, so this is the check that applies to each path.

    An API body without a Content-Length (Transfer-Encoding: chunked) is a 411: under WSGI Django
    reads such a body as empty (its stream is limited to CONTENT_LENGTH, absent: 0), and the view
    would answer as if no field had been sent. Reading it would need a cap enforced while reading,
    below Django and DRF, which both take a missing length for an empty body."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        api = is_api_path(request.path)
        if api and request.method in BODY_METHODS and "HTTP_TRANSFER_ENCODING" in request.META:
            return json_error_response(
                411,
                "Send the request body with a Content-Length header; chunked bodies are not accepted.",
                code="length_required",
            )
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            if not api:  # Django reads such a body as empty
                return self.get_response(request)
            return json_error_response(400, "Invalid Content-Length header.", code="invalid_content_length")
        limit = request_bytes_limit(request)
        if length > limit:
            message = f"Request body is {length} bytes; the limit is {limit} bytes."
            if not api:
                return HttpResponse(message, status=413, content_type="text/plain")
            return json_error_response(413, message, code="request_too_large")
        return self.get_response(request)


class ApiNotFoundMiddleware:
    """A 404 on an API path in the API's JSON shape whatever DEBUG is. With DEBUG on, Django answers
    an unknown route with its technical page (HTML listing every URL pattern) and never calls
    handler404. Placed before CommonMiddleware, so its redirect to the slashed path still happens."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if (
            response.status_code == 404
            and is_api_path(request.path)
            and response.get("Content-Type", "").split(";")[0] != "application/json"
        ):
            return api_not_found_response(request)
        return response
