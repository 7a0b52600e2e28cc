"""What OpenAI clients make of a refusal no retry can end: an exhausted budget or monthly token quota
on /v1 is OpenAI's own `insufficient_quota` (429, `x-should-retry: false`), which the openai SDK,
langchain-openai and litellm raise at once instead of retrying in vain."""

from __future__ import annotations

from decimal import Decimal

import litellm
import openai
import pytest
from langchain_openai import ChatOpenAI

from billing.services import budget_update
from monitoring.models import Trace
from tests.conftest import client_with_key

pytestmark = pytest.mark.django_db(transaction=True)

QUESTION = [{"role": "user", "content": "Capital of France?"}]


@pytest.fixture(params=["budget", "monthly_tokens"])
def exhausted(request, tenant):
    """A tenant whose budget, or monthly token quota, is used up."""
    if request.param == "budget":
        budget_update(tenant=tenant, actor="test", monthly_budget_usd=Decimal("0.00"))
    else:
        tenant.monthly_token_quota = 5
        tenant.save()
    return request.param


@pytest.fixture
def key(tenant, make_key):
    return make_key(tenant, scopes=["chat"])[1]


def calls_made() -> int:
    return Trace.objects.filter(status="refused").count()


@pytest.mark.parametrize("stream", [False, True])
def test_the_openai_sdk_raises_at_once(live_server, key, upstreams, exhausted, stream):
    client = openai.OpenAI(api_key=key, base_url=f"{live_server.url}/v1")  # its default: 2 retries
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, stream=stream)
    assert refused.value.status_code == 429
    assert (refused.value.body["type"], refused.value.body["code"]) == ("insufficient_quota",) * 2
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert "retry-after" not in refused.value.response.headers
    assert calls_made() == 1  # no retry


def test_langchain_openai_raises_at_once(live_server, key, upstreams, exhausted):
    chat = ChatOpenAI(model="gpt-4o-mini", api_key=key, base_url=f"{live_server.url}/v1", max_retries=2)
    with pytest.raises(openai.RateLimitError):
        chat.invoke("Capital of France?")
    assert calls_made() == 1


def test_litellm_raises_at_once(live_server, key, upstreams, exhausted):
    with pytest.raises(litellm.RateLimitError) as refused:
        litellm.completion(
            model="openai/gpt-4o-mini",
            api_base=f"{live_server.url}/v1",
            api_key=key,
            messages=QUESTION,
            max_retries=2,
        )
    assert refused.value.status_code == 429
    assert calls_made() == 1


def test_the_tenant_api_keeps_its_documented_refusals(tenant, key, upstreams, exhausted):
    response = client_with_key(key).post("/api/v1/chat", {"message": "Capital of France?"}, format="json")
    if exhausted == "budget":
        assert (response.status_code, response.json()["error"]["code"]) == (402, "budget_exceeded")
    else:
        assert (response.status_code, response.json()["error"]["code"]) == (
            429,
            "monthly_token_quota_exceeded",
        )
        assert int(response["Retry-After"]) > 0
    assert "x-should-retry" not in response
