"""The official `openai` SDK, pointed at this server's /v1, works unchanged (both modes)."""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from billing.models import UsageEntry
from billing.services import budget_update
from monitoring.models import Trace

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sdk(live_server, tenant, make_key, upstreams):
    _, raw_key = make_key(tenant, scopes=["chat"])
    return openai.OpenAI(api_key=raw_key, base_url=f"{live_server.url}/v1", max_retries=0)


QUESTION = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Capital of France?"}]


def test_chat_completions_through_the_openai_sdk(sdk, tenant, upstreams):
    openai_server, _ = upstreams
    completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, temperature=0.5)
    assert completion.choices[0].message.content == "Paris is the capital of France."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o-mini"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (30, 8)
    assert completion.usage.prompt_tokens_details.cached_tokens == 5
    assert openai_server.requests[0]["body"]["messages"] == QUESTION
    assert UsageEntry.objects.get(tenant=tenant).output_tokens == 8
    assert Trace.objects.get().endpoint == "openai"


def test_streaming_with_include_usage_through_the_openai_sdk(sdk, tenant, upstreams):
    stream = sdk.chat.completions.create(
        model="gpt-4o-mini", messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == "Paris is the capital of France."
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 8
    assert UsageEntry.objects.filter(tenant=tenant).count() == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_an_answer_cut_at_max_tokens_says_length_in_both_modes(sdk, upstreams, settings, provider):
    """Anthropic's stop_reason max_tokens, like OpenAI's own, is finish_reason "length": a client can
    tell a cut answer from a whole one, streamed or not."""
    servers = dict(zip(["openai", "anthropic"], upstreams, strict=True))
    servers[provider].truncated = True
    model = "gpt-4o-mini" if provider == "openai" else "claude-haiku-4-5"
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = [f"{provider}:{model}"]
    completion = sdk.chat.completions.create(model=model, messages=QUESTION, max_tokens=8)
    assert completion.choices[0].finish_reason == "length"
    chunks = list(sdk.chat.completions.create(model=model, messages=QUESTION, max_tokens=8, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "length"
    ]


def test_streaming_without_usage_option_sends_no_usage_chunk(sdk, upstreams):
    chunks = list(sdk.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, stream=True))
    assert all(chunk.usage is None for chunk in chunks)


def test_models_lists_the_tenants_allowed_models(sdk, tenant):
    tenant.allowed_models = ["gpt-4o*", "local"]
    tenant.save()
    ids = {model.id for model in sdk.models.list()}
    assert {"gpt-4o", "gpt-4o-mini", "local"} <= ids
    assert "claude-haiku-4-5" not in ids


@pytest.fixture
def offline_sdk(live_server, tenant, make_key, settings):
    """No provider configured: neither credentials nor a base URL for OpenAI or Anthropic."""
    settings.OPENAI_API_KEY = settings.ANTHROPIC_API_KEY = ""
    settings.OPENAI_BASE_URL = settings.ANTHROPIC_BASE_URL = None
    _, raw_key = make_key(tenant, scopes=["chat"])
    return openai.OpenAI(api_key=raw_key, base_url=f"{live_server.url}/v1", max_retries=0)


def test_models_lists_only_chat_models_of_configured_providers(offline_sdk, settings, openai_server):
    settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = "", None  # the fake exists, but is not configured
    assert [model.id for model in offline_sdk.models.list()] == ["local"]
    settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = "test-openai-key", openai_server.base_url
    listed = {(model.owned_by, model.id) for model in offline_sdk.models.list()}
    assert {("openai", "gpt-4o-mini"), ("local", "local")} <= listed
    assert not {provider for provider, _ in listed} - {"openai", "local"}  # no Anthropic without a key
    assert not {model for _, model in listed} & {"text-embedding-3-small", "hashing-embedder"}


@pytest.mark.parametrize("model", ["hashing-embedder", "text-embedding-3-small", "local:hashing-embedder"])
def test_an_embedding_model_is_no_chat_model(sdk, upstreams, model):
    openai_server, _ = upstreams
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=model, messages=QUESTION)
    assert (refused.value.body["code"], refused.value.body["param"]) == ("model_not_available", "model")
    assert openai_server.requests == []
    assert not UsageEntry.objects.exists()


def test_a_model_of_an_unconfigured_provider_is_refused_and_never_called(offline_sdk, tenant):
    with pytest.raises(openai.BadRequestError) as refused:
        offline_sdk.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
    assert refused.value.body["code"] == "model_not_available"
    assert "openai" in refused.value.body["message"]
    trace = Trace.objects.get()
    assert (trace.status, trace.attempts) == ("refused", 0)
    assert not trace.spans.filter(name="provider").exists()


def test_a_chain_skips_providers_that_are_not_configured(offline_sdk, settings):
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = ["openai:gpt-4o-mini", "anthropic:claude-haiku-4-5", "local:local"]
    completion = offline_sdk.chat.completions.create(model="local", messages=QUESTION)
    assert completion.model == "local"
    spans = Trace.objects.get().spans.filter(name="provider")
    assert [span.attributes["provider"] for span in spans] == ["local"]  # no attempt to reach the others


@pytest.mark.parametrize("stream", [False, True])
def test_the_local_model_keeps_to_max_tokens(offline_sdk, stream):
    if stream:
        chunks = list(
            offline_sdk.chat.completions.create(
                model="local",
                messages=QUESTION,
                max_tokens=3,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
        usage = chunks[-1].usage
    else:
        completion = offline_sdk.chat.completions.create(model="local", messages=QUESTION, max_tokens=3)
        finish, usage = completion.choices[0].finish_reason, completion.usage
    assert finish == "length"
    assert 0 < usage.completion_tokens <= 3


def test_errors_reach_the_sdk_in_openai_shape(sdk, live_server, tenant):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="tk_nope", base_url=f"{live_server.url}/v1", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=[])
    assert bad.value.body["param"] == "messages"
    budget_update(tenant=tenant, actor="t", monthly_budget_usd=Decimal("0.00"))
    with pytest.raises(openai.RateLimitError) as refused:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
    assert refused.value.status_code == 429
    assert refused.value.body["type"] == "insufficient_quota"


def test_idempotency_key_replays_streams_and_json_without_a_second_call(sdk, tenant, upstreams):
    openai_server, _ = upstreams
    headers = {"Idempotency-Key": "job-7"}

    def stream_text() -> str:
        stream = sdk.chat.completions.create(
            model="gpt-4o-mini",
            messages=QUESTION,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=headers,
        )
        return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    assert stream_text() == "Paris is the capital of France."
    assert stream_text() == "Paris is the capital of France."
    with pytest.raises(openai.UnprocessableEntityError):  # same key, another body (not streamed)
        sdk.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, extra_headers=headers)
    assert len(openai_server.requests) == 1
    assert UsageEntry.objects.filter(tenant=tenant).count() == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_fallback_s_answer_names_the_model_that_served_it(sdk, upstreams, stream):
    """As OpenAI's responses do: every streamed chunk, not only the last, names the served model."""
    openai_server, _ = upstreams
    openai_server.then("500", "500")  # both attempts at gpt-4o-mini fail: Anthropic answers
    if stream:
        chunks = list(sdk.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, stream=True))
        assert {chunk.model for chunk in chunks} == {"claude-haiku-4-5"}
    else:
        completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=QUESTION)
        assert completion.model == "claude-haiku-4-5"


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("tools", [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]),
        ("tool_choice", "required"),
        ("response_format", {"type": "json_object"}),
        ("logprobs", True),
        ("web_search_options", {}),  # an empty object turns web search on
    ],
)
def test_parameters_the_gateway_does_not_implement_are_a_400_not_dropped(
    sdk, tenant, upstreams, param, value
):
    """Dropped, a client asking for a tool call or JSON mode would take plain text for it."""
    openai_server, _ = upstreams
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, **{param: value})
    assert refused.value.param == param
    assert "not supported" in refused.value.message
    assert not openai_server.requests
    assert not UsageEntry.objects.filter(tenant=tenant).exists()


def test_parameters_asking_for_nothing_or_only_shading_the_answer_are_accepted(sdk, upstreams):
    completion = sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=QUESTION,
        response_format={"type": "text"},
        tool_choice="none",
        parallel_tool_calls=True,
        logprobs=False,
        stop=None,
        seed=7,
        presence_penalty=0.5,
    )
    assert completion.choices[0].message.content == "Paris is the capital of France."


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_stop_sequences_reach_the_provider_in_both_modes(sdk, upstreams, settings, provider):
    server = dict(zip(["openai", "anthropic"], upstreams, strict=True))[provider]
    model = "gpt-4o-mini" if provider == "openai" else "claude-haiku-4-5"
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = [f"{provider}:{model}"]
    sdk.chat.completions.create(model=model, messages=QUESTION, stop="END")
    list(sdk.chat.completions.create(model=model, messages=QUESTION, stop=["END", "Q:"], stream=True))
    sdk.chat.completions.create(model=model, messages=QUESTION)
    field = "stop" if provider == "openai" else "stop_sequences"
    assert [request["body"].get(field) for request in server.requests] == [["END"], ["END", "Q:"], None]


@pytest.mark.parametrize("stream", [False, True])
def test_the_local_model_ends_before_the_first_stop_sequence(sdk, upstreams, settings, stream):
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = ["local:local"]
    question = [{"role": "user", "content": "Capital of France?"}]
    if stream:
        chunks = sdk.chat.completions.create(
            model="local", messages=question, stop=["zzz", "asked"], stream=True
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    else:
        completion = sdk.chat.completions.create(model="local", messages=question, stop=["zzz", "asked"])
        text = completion.choices[0].message.content
    assert text == "(local model) You "


def test_the_exact_cache_tells_answers_to_other_stop_sequences_apart(sdk, upstreams):
    openai_server, _ = upstreams
    for stop in (None, "END", None, "END"):
        sdk.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, temperature=0, stop=stop)
    assert len(openai_server.requests) == 2


@pytest.mark.parametrize("stop", [5, ["a", "b", "c", "d", "e"], [""], [1], "a\x00", {"x": 1}])
def test_bad_stop_sequences_are_400(sdk, upstreams, stop):
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model="gpt-4o-mini", messages=QUESTION, stop=stop)
    assert refused.value.param == "stop"
    assert not upstreams[0].requests


@pytest.mark.parametrize("stream", [False, True])
def test_whitespace_stop_sequences_anthropic_refuses_are_applied_on_our_side(
    sdk, tenant, upstreams, settings, stream
):
    """Anthropic refuses a stop sequence of only whitespace (a 400): a client's stop=["\\n"] would fail
    on an Anthropic target, a fallback's included. Such sequences are kept from it and cut here."""
    _, anthropic_server = upstreams
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = ["anthropic:claude-haiku-4-5"]
    stop = [" ", "capital"]
    if stream:
        chunks = list(
            sdk.chat.completions.create(model="claude-haiku-4-5", messages=QUESTION, stop=stop, stream=True)
        )
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        assert chunks[-1].choices[0].finish_reason == "stop"
    else:
        completion = sdk.chat.completions.create(model="claude-haiku-4-5", messages=QUESTION, stop=stop)
        text = completion.choices[0].message.content
        assert completion.choices[0].finish_reason == "stop"
    assert text == "Paris"  # the fake's answer, "Paris is the capital of France.", up to the first space
    assert anthropic_server.requests[0]["body"]["stop_sequences"] == ["capital"]
    assert UsageEntry.objects.get(tenant=tenant).output_tokens > 0
