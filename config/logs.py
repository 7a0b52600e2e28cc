"""Log lines with the request they belong to: JSON in production, plain text in development.

A request's id, its tenant (once its API key is authenticated) and its trace id (once the chat
pipeline starts its trace) live in context variables; RequestContextFilter copies them onto every
record, and the formatters print them. Nothing here imports Django at module level: gunicorn's master
loads these formatters before any settings exist (config/gunicorn.conf.py).
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

CONTEXT_FIELDS = ("request_id", "tenant", "trace_id")
_context: dict[str, ContextVar[str | None]] = {
    name: ContextVar(f"log_{name}", default=None) for name in CONTEXT_FIELDS
}

# A client's own X-Request-ID is kept when it looks like an id; anything else is replaced.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Secrets a message could carry by accident: our API keys (the secret part), bearer tokens, and
# OpenAI/Anthropic-style keys.
SECRET_PATTERNS = [
    (re.compile(r"\b(tk_[A-Za-z0-9]+_)[A-Za-z0-9_-]+"), r"\1[redacted]"),
    (re.compile(r"(?i)\b(bearer\s+)[^\s'\",]+"), r"\1[redacted]"),
    (re.compile(r"\b(sk-(?:ant-)?)[A-Za-z0-9_-]{8,}"), r"\1[redacted]"),
]


def log_context_update(**values: str | None) -> None:
    """Sets some of request_id, tenant and trace_id for the rest of this request (this thread)."""
    for name, value in values.items():
        _context[name].set(value)


def log_context_clear() -> None:
    log_context_update(**dict.fromkeys(CONTEXT_FIELDS))


def log_context() -> dict[str, str]:
    return {name: value for name, var in _context.items() if (value := var.get()) is not None}


def redact(text: str) -> str:
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RequestContextFilter(logging.Filter):
    """Copies the request's context onto the record (record.request_id etc., and record.context, a
    printable suffix for the plain format)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = log_context()
        for name in CONTEXT_FIELDS:
            setattr(record, name, context.get(name))
        record.context = "".join(f" {name}={value}" for name, value in context.items())
        return True


class PlainFormatter(logging.Formatter):
    """Development: `time LEVEL logger message request_id=... tenant=...`, secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "context"):
            record.context = ""
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """Production: one JSON object per line: time, level, logger, message, the request's context,
    and the exception's traceback (escaped into the same line); secrets redacted."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        return json.dumps(entry, ensure_ascii=False, default=str)


class RequestContextMiddleware:
    """Gives each request an id (the client's X-Request-ID when it is a plausible id), echoed in the
    response's X-Request-ID, and starts its log context. The context is cleared when the response is
    closed, so a stream's lines keep it and the thread's next work does not."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        from django.core.signals import request_finished

        self.get_response = get_response
        request_finished.connect(_clear_on_finish, dispatch_uid="config.logs.clear")

    def __call__(self, request: HttpRequest) -> HttpResponse:
        sent = request.headers.get("X-Request-ID", "")
        request_id = sent if REQUEST_ID_PATTERN.fullmatch(sent) else uuid.uuid4().hex
        log_context_clear()
        log_context_update(request_id=request_id)
        response = self.get_response(request)
        response["X-Request-ID"] = request_id
        return response


def _clear_on_finish(sender: object, **kwargs: object) -> None:
    log_context_clear()
