"""A budget cannot be overspent: the reservation holds the most a provider can count (input within
the UTF-8 bytes sent plus per-message overhead, output within the max_tokens always sent), and a
provider reporting more is charged that bound."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from django.db import connections

from billing.models import BudgetPeriod, Reservation, UsageEntry
from billing.services import budget_update
from chat.tokens import input_token_bound
from tests.conftest import client_with_key

BUDGET_NANOS = 10_000_000  # $0.01: about 30 of these requests at gpt-4o's prices
QUESTION = "Résumé the quarterly numbers for Zürich, then the ones for 東京, in one line each."


def hammer(raw_key: str, clients: int) -> list[int]:
    barrier = threading.Barrier(clients)

    def one(index: int) -> int:
        try:
            barrier.wait()
            response = client_with_key(raw_key).post(
                "/v1/chat/completions",
                {
                    "model": "gpt-4o",
                    "messages": [{"role": "user", "content": f"{QUESTION} #{index}"}],
                    "max_tokens": 1,
                },
                format="json",
            )
            return response.status_code
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=clients) as pool:
        return list(pool.map(one, range(clients)))


@pytest.fixture
def small_budget_key(tenant, make_key, upstreams, settings):
    settings.CHAT_DEFAULT_FALLBACK_CHAIN = ["openai:gpt-4o"]  # no cheaper model to fall back to
    # 64 clients on two cores: the fake upstream answers late, which is no fault of its own here.
    settings.CHAT_CONNECT_TIMEOUT_SECONDS = settings.CHAT_REQUEST_TIMEOUT_SECONDS = 30.0
    budget_update(tenant=tenant, actor="test", monthly_budget_usd=Decimal(BUDGET_NANOS) / 10**9)
    return make_key(tenant, scopes=["chat"])[1]


def assert_within_budget_and_nothing_reserved(tenant, statuses: list[int]) -> None:
    balance = BudgetPeriod.objects.get(tenant=tenant)
    charged = sum(UsageEntry.objects.filter(tenant=tenant).values_list("cost_nanos", flat=True))
    assert balance.spent_nanos == charged <= BUDGET_NANOS
    assert (balance.reserved_nanos, balance.tokens_reserved) == (0, 0)
    assert not Reservation.objects.exists()
    assert set(statuses) <= {200, 429}  # answered, or refused for the budget (insufficient_quota)
    assert statuses.count(200) == UsageEntry.objects.filter(tenant=tenant).count() > 0
    assert statuses.count(429) > 0  # the budget did run out


@pytest.mark.django_db(transaction=True)
def test_a_provider_reporting_the_most_it_can_never_overspends_the_budget(
    tenant, small_budget_key, upstreams
):
    openai_server, _ = upstreams
    reported: dict[str, tuple[int, int, int]] = {}

    def the_most_it_can(body):
        usage = (input_token_bound(body["messages"]), 0, body["max_tokens"])
        reported[body["messages"][-1]["content"]] = usage
        return usage

    openai_server.usage = the_most_it_can
    statuses = hammer(small_budget_key, clients=64)
    assert_within_budget_and_nothing_reserved(tenant, statuses)
    # It was charged what it reported: the bound is the provider's own worst case, not a cap below it.
    for entry in UsageEntry.objects.filter(tenant=tenant):
        assert (entry.input_tokens, entry.cached_input_tokens, entry.output_tokens) in reported.values()
        assert entry.output_tokens == 1


@pytest.mark.django_db(transaction=True)
def test_a_provider_reporting_more_than_it_can_is_charged_the_bound(
    tenant, small_budget_key, upstreams, caplog
):
    openai_server, _ = upstreams
    bounds: set[int] = set()

    def too_much(body):  # ten times what the input can be, and max_tokens ignored
        bounds.add(input_token_bound(body["messages"]))
        return (10 * input_token_bound(body["messages"]), 0, 50)

    openai_server.usage = too_much
    statuses = hammer(small_budget_key, clients=64)
    assert_within_budget_and_nothing_reserved(tenant, statuses)
    for entry in UsageEntry.objects.filter(tenant=tenant):
        assert (entry.input_tokens in bounds, entry.output_tokens) == (True, 1)
    assert "beyond the reserved bound" in caplog.text
