from __future__ import annotations

import pytest

from billing import services as billing_services
from billing.models import ModelPrice
from billing.pricing_data import seed_prices
from chat import embeddings
from chat.documents import documents_cache
from chat.services import chat_settings_cache
from config.celery import app as celery_app
from prompts import selectors as prompt_selectors
from prompts.services import prompt_template_create, prompt_version_create
from tests.conftest import client_with_key
from tests.fake_llm import FakeLLMServer


@pytest.fixture(autouse=True)
def _chat_state(db, settings) -> None:
    """Fresh per-process caches, seed prices back, fast timeouts and retries for the fault tests."""
    billing_services.price_table.clear()
    billing_services._period_ids.clear()
    chat_settings_cache.clear()
    documents_cache.clear()
    embeddings._query_vectors = embeddings._LocalLRU(4096)
    prompt_selectors.prompt_snapshots.clear()
    seed_prices(ModelPrice)
    settings.CHAT_REQUEST_TIMEOUT_SECONDS = 1.0
    settings.CHAT_FIRST_TOKEN_TIMEOUT_SECONDS = 1.0
    settings.CHAT_CONNECT_TIMEOUT_SECONDS = 1.0
    settings.CHAT_RETRY_BASE_DELAY_SECONDS = 0.01
    settings.CHAT_RETRY_MAX_DELAY_SECONDS = 0.05
    settings.CHAT_MAX_RETRIES = 1


@pytest.fixture
def openai_server(settings):
    server = FakeLLMServer("openai")
    settings.OPENAI_BASE_URL = server.base_url
    settings.OPENAI_API_KEY = "test-openai-key"
    yield server
    server.close()


@pytest.fixture
def anthropic_server(settings):
    server = FakeLLMServer("anthropic")
    settings.ANTHROPIC_BASE_URL = server.base_url
    settings.ANTHROPIC_API_KEY = "test-anthropic-key"
    yield server
    server.close()


@pytest.fixture
def upstreams(openai_server, anthropic_server, settings):
    """OpenAI first, then Anthropic, then the local model."""
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5", "local:local"]
    return openai_server, anthropic_server


@pytest.fixture
def chat_client(tenant, make_key):
    return client_with_key(make_key(tenant, scopes=["chat"])[1])


@pytest.fixture
def eager_tasks():
    """Celery tasks run in-process when queued (ingestion right after the upload commits)."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


@pytest.fixture
def docs_client(tenant, make_key):
    return client_with_key(make_key(tenant, scopes=["documents", "chat"])[1])


@pytest.fixture
def support_prompt(tenant):
    """Template "support": v1 "You answer for {{ company }}.", v2 "Be brief, {{ company }}."."""
    template = prompt_template_create(
        tenant=tenant,
        name="support",
        kind="chat",
        actor="t",
        messages=[{"role": "system", "content": "You answer for {{ company }}."}],
    )
    prompt_version_create(
        template=template, actor="t", messages=[{"role": "system", "content": "Be brief, {{ company }}."}]
    )
    return template
