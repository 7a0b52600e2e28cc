from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import pytest
from django.utils import timezone

from monitoring.models import Trace
from monitoring.services import TraceRecorder
from tenants.models import Scope, Tenant
from tests.chat.conftest import (  # noqa: F401  # the fake providers, for tests that chat
    anthropic_server,
    chat_client,
    openai_server,
    upstreams,
)
from tests.conftest import KeyFactory, client_with_key


def make_trace(
    tenant: Tenant,
    *,
    created_at: datetime | None = None,
    spans: tuple[str, ...] = (),
    status: str = "ok",
    error: str = "",
    **fields: Any,
) -> Trace:
    """A trace written the way the pipeline writes one (TraceRecorder, inline in tests)."""
    recorder = TraceRecorder(
        tenant=tenant,
        request_id=fields.pop("request_id", uuid.uuid4().hex),
        endpoint=fields.pop("endpoint", "chat"),
        created_at=created_at or timezone.now(),
    )
    for name in spans:
        with recorder.span(name, note=name):
            pass
    recorder.set(**fields)
    recorder.finish(status=status, error=error)
    return Trace.objects.get(pk=recorder.id)


@pytest.fixture
def chat_key_client(tenant: Tenant, make_key: KeyFactory) -> Any:
    return client_with_key(make_key(tenant, scopes=[Scope.CHAT])[1])


@pytest.fixture
def reader(tenant: Tenant, make_key: KeyFactory) -> Any:
    return client_with_key(make_key(tenant, scopes=[Scope.TRACES_READ])[1])
