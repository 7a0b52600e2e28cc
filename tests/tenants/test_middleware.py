"""tenants/middleware.py through a real gunicorn: what reaches the app of a body framed without a
Content-Length, which Django's test client cannot send."""

from __future__ import annotations

import http.client
import json

from tenants.models import Scope


def send(server, method: str, path: str, body: object, raw_key: str, *, chunked: bool) -> tuple[int, dict]:
    data = json.dumps(body).encode()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json"}
    try:
        # An iterable body without a Content-Length: http.client sends it chunked.
        connection.request(
            method, path, body=iter([data[:5], data[5:]]) if chunked else data, headers=headers
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


CHUNKED_BODIES = [
    ("POST", "/api/v1/chat", {"message": "hello"}),
    ("POST", "/v1/chat/completions", {"model": "local", "messages": [{"role": "user", "content": "hi"}]}),
    ("PATCH", "/api/v1/me", {"name": "renamed"}),
    ("PUT", "/api/v1/me", {"name": "renamed"}),
]


def test_a_chunked_api_body_is_a_411_not_read_as_empty(gunicorn_server, tenant, make_key):
    """Before: gunicorn passed the chunked body on without CONTENT_LENGTH, Django read nothing, and
    the chat answered 400 "message: This field is required.". One server for every case: each
    start costs seconds."""
    _, raw_key = make_key(tenant, scopes=[Scope.ADMIN])
    for method, path, body in CHUNKED_BODIES:
        status, error = send(gunicorn_server, method, path, body, raw_key, chunked=True)
        assert status == 411, (method, path, error)
        assert error["error"]["type"] == "invalid_request_error"
        assert error["error"]["code"] == "length_required"
        assert "Content-Length" in error["error"]["message"]
    # The same kind of body with a Content-Length is read.
    status, created = send(
        gunicorn_server, "POST", "/api/v1/keys", {"name": "ci", "scopes": ["chat"]}, raw_key, chunked=False
    )
    assert status == 201, created
    assert created["name"] == "ci"
