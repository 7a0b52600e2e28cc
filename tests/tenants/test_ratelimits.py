from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tenants.errors import ApiError
from tenants.models import ApiKey, Scope
from tenants.ratelimits import (
    TokenReservation,
    request_usages,
    token_rate_adjusting,
    token_rate_reserve,
    tokens_this_minute,
)
from tests.conftest import client_with_key, start_of_fresh_token_window

RATELIMIT_FIELD = re.compile(r'^"(?P<name>[a-z-]+)";r=(?P<remaining>\d+);t=(?P<reset>\d+)$')


def start_of_fresh_windows(api_key) -> None:
    """Waits out a window that ends within 5 s, so a test's burst never straddles two windows."""
    closest_reset = min(usage.reset_seconds for usage in request_usages(None, api_key=api_key))
    if closest_reset < 5:
        time.sleep(closest_reset + 1)


def test_tenant_limit_gives_429_with_retry_after_and_ratelimit_headers(tenant, make_key):
    tenant.requests_per_minute = 3
    tenant.save()
    api_key, raw_key = make_key(tenant, scopes=[Scope.CHAT])
    start_of_fresh_windows(api_key)
    client = client_with_key(raw_key)
    statuses = [client.get("/api/v1/me") for _ in range(4)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429]
    ok, limited = statuses[2], statuses[3]
    assert ok["RateLimit-Policy"] == '"tenant-requests";q=3;w=60'  # the key has no limit of its own
    assert RATELIMIT_FIELD.match(ok["RateLimit"]).group("remaining") == "0"
    body = limited.json()["error"]
    assert body["type"] == "rate_limit_error"
    assert body["code"] == "requests_per_minute_exceeded"
    retry_after = int(limited["Retry-After"])
    assert 1 <= retry_after <= 60
    field = RATELIMIT_FIELD.match(limited["RateLimit"])
    assert field.group("remaining") == "0"
    assert int(field.group("reset")) <= 60


def test_tenant_limit_is_shared_by_all_its_keys(tenant, make_key):
    tenant.requests_per_minute = 4
    tenant.save()
    keys = [make_key(tenant, scopes=[Scope.CHAT]) for _ in range(2)]
    for api_key, _ in keys:
        start_of_fresh_windows(api_key)
    clients = [client_with_key(raw_key) for _, raw_key in keys]
    codes = [clients[i % 2].get("/api/v1/me").status_code for i in range(6)]
    assert codes == [200, 200, 200, 200, 429, 429]


def test_per_key_limit_applies_below_the_tenant_limit(tenant, make_key):
    limited_key, limited_raw = make_key(tenant, scopes=[Scope.CHAT], requests_per_minute=2)
    _, other_raw = make_key(tenant, scopes=[Scope.CHAT])
    start_of_fresh_windows(limited_key)
    limited = client_with_key(limited_raw)
    first = limited.get("/api/v1/me")
    tenant_policy = f'"tenant-requests";q={tenant.requests_per_minute};w=60'
    assert first["RateLimit-Policy"] == f'"key-requests";q=2;w=60, {tenant_policy}'
    assert [first.status_code] + [limited.get("/api/v1/me").status_code for _ in range(2)] == [200, 200, 429]
    assert limited.get("/api/v1/me")["RateLimit-Policy"] == '"key-requests";q=2;w=60'
    assert client_with_key(other_raw).get("/api/v1/me").status_code == 200


def test_a_key_limit_of_zero_means_none_of_its_own(tenant, make_key):
    api_key, raw_key = make_key(tenant, scopes=[Scope.CHAT])
    ApiKey.objects.filter(pk=api_key.pk).update(requests_per_minute=0)  # as the admin form allows
    response = client_with_key(raw_key).get("/api/v1/me")
    assert response.status_code == 200
    assert response["RateLimit-Policy"] == f'"tenant-requests";q={tenant.requests_per_minute};w=60'


def test_limits_are_per_tenant(tenant, other_tenant, make_key):
    tenant.requests_per_minute = 1
    tenant.save()
    my_key, my_raw = make_key(tenant, scopes=[Scope.CHAT])
    start_of_fresh_windows(my_key)
    mine = client_with_key(my_raw)
    theirs = client_with_key(make_key(other_tenant, scopes=[Scope.CHAT])[1])
    assert mine.get("/api/v1/me").status_code == 200
    assert mine.get("/api/v1/me").status_code == 429
    assert theirs.get("/api/v1/me").status_code == 200


def test_raising_the_quota_takes_effect_immediately(tenant, make_key):
    tenant.requests_per_minute = 1
    tenant.save()
    api_key, raw_key = make_key(tenant, scopes=[Scope.CHAT])
    start_of_fresh_windows(api_key)
    client = client_with_key(raw_key)
    assert client.get("/api/v1/me").status_code == 200
    assert client.get("/api/v1/me").status_code == 429
    tenant.requests_per_minute = 100
    tenant.save()
    assert client.get("/api/v1/me").status_code == 200


def test_token_reservation_is_all_or_nothing(tenant):
    start_of_fresh_token_window(tenant)
    tenant.tokens_per_minute = 1000
    reservation = token_rate_reserve(tenant=tenant, tokens=600)
    assert reservation.usage.count == 600
    with pytest.raises(ApiError) as raised:
        token_rate_reserve(tenant=tenant, tokens=500)
    assert raised.value.status_code == 429
    assert raised.value.headers["Retry-After"]
    assert tokens_this_minute(tenant=tenant).count == 600  # the refused reservation took nothing
    with token_rate_adjusting(tenant=tenant, reservation=reservation, used=250):
        pass
    assert tokens_this_minute(tenant=tenant).count == 250
    assert token_rate_reserve(tenant=tenant, tokens=750).usage.count == 1000


def test_a_token_window_counter_expires_after_its_minute(tenant):
    from django.core.cache import cache
    from django_redis import get_redis_connection

    reservation = token_rate_reserve(tenant=tenant, tokens=10)
    token_rate_reserve(tenant=tenant, tokens=5)
    ttl = get_redis_connection("default").ttl(cache.make_key(reservation.counter))
    assert 60 <= ttl <= 65


def test_token_adjustment_never_touches_a_later_window(tenant):
    start_of_fresh_token_window(tenant)
    tenant.tokens_per_minute = 1000
    reservation = token_rate_reserve(tenant=tenant, tokens=600)
    stale = TokenReservation(f"ratelimit:tpm:{tenant.pk}:0", 600, reservation.usage)  # a minute long gone
    with token_rate_adjusting(tenant=tenant, reservation=stale, used=10):
        pass
    assert tokens_this_minute(tenant=tenant).count == 600


def test_token_adjustment_applies_even_when_the_overlapped_block_fails(tenant):
    start_of_fresh_token_window(tenant)
    tenant.tokens_per_minute = 1000
    reservation = token_rate_reserve(tenant=tenant, tokens=600)
    with pytest.raises(RuntimeError), token_rate_adjusting(tenant=tenant, reservation=reservation, used=250):
        raise RuntimeError("the settlement failed")
    assert tokens_this_minute(tenant=tenant).count == 250


def test_token_adjustment_does_not_bring_back_a_vanished_counter(tenant):
    from django.core.cache import cache

    reservation = token_rate_reserve(tenant=tenant, tokens=600)
    cache.delete(reservation.counter)  # evicted, say
    with token_rate_adjusting(tenant=tenant, reservation=reservation, used=10):
        pass
    assert cache.get(reservation.counter) is None


def test_token_adjustment_survives_redis_forgetting_its_scripts(tenant):
    start_of_fresh_token_window(tenant)
    from django_redis import get_redis_connection

    reservation = token_rate_reserve(tenant=tenant, tokens=600)
    get_redis_connection("default").script_flush()
    with token_rate_adjusting(tenant=tenant, reservation=reservation, used=100):
        pass
    assert tokens_this_minute(tenant=tenant).count == 100


def test_token_adjustment_without_redis_still_runs_the_block(tenant, settings):
    reservation = token_rate_reserve(tenant=tenant, tokens=600)
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}}
    ran = []
    with token_rate_adjusting(tenant=tenant, reservation=reservation, used=100):
        ran.append(True)
    assert ran == [True]


def test_concurrent_token_reservations_never_exceed_the_limit(tenant):
    start_of_fresh_token_window(tenant)
    tenant.tokens_per_minute = 1000

    def reserve() -> bool:
        try:
            token_rate_reserve(tenant=tenant, tokens=100)
            return True
        except ApiError:
            return False

    with ThreadPoolExecutor(max_workers=16) as pool:
        admitted = sum(pool.map(lambda _: reserve(), range(40)))
    assert admitted == 10
    assert tokens_this_minute(tenant=tenant).count == 1000


def test_concurrent_requests_across_gunicorn_workers_admit_exactly_the_limit(
    gunicorn_server, make_key, tenant
):
    limit = 25
    tenant.requests_per_minute = limit
    tenant.save()
    api_key, raw_key = make_key(tenant, scopes=[Scope.CHAT])
    start_of_fresh_windows(api_key)

    def call(_: int) -> int:
        request = urllib.request.Request(
            f"{gunicorn_server.url}/api/v1/me", headers={"Authorization": f"Bearer {raw_key}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                json.load(response)
                return int(response.status)
        except urllib.error.HTTPError as error:
            return error.code

    with ThreadPoolExecutor(max_workers=24) as pool:
        codes = list(pool.map(call, range(3 * limit)))
    assert codes.count(200) == limit
    assert codes.count(429) == 2 * limit


class FakeClock:
    """Stands in for the `time` module of django-ratelimit: the test decides what second it is."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.mark.parametrize("seconds_left", [0, 1, 17, 59])
@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.999])
def test_retry_after_names_the_first_second_the_request_is_admitted(
    tenant, make_key, monkeypatch, seconds_left, fraction
):
    import django_ratelimit.core

    tenant.requests_per_minute = 1
    tenant.save()
    api_key, raw_key = make_key(tenant, scopes=[Scope.CHAT])
    clock = FakeClock(1_800_000_000.0)
    monkeypatch.setattr(django_ratelimit.core, "time", clock)
    # `seconds_left` whole seconds (and `fraction`) before the last second of the tenant's window.
    time_left = request_usages(None, api_key=api_key)[0].reset_seconds - 1
    clock.now += (time_left - seconds_left) % 60 + fraction
    client = client_with_key(raw_key)
    assert client.get("/api/v1/me").status_code == 200
    limited = client.get("/api/v1/me")
    assert limited.status_code == 429
    retry_after = int(limited["Retry-After"])
    assert RATELIMIT_FIELD.match(limited["RateLimit"])["reset"] == str(retry_after)
    first_admitted_second = math.floor(clock.now) + retry_after
    clock.now = first_admitted_second - 0.001
    assert client.get("/api/v1/me").status_code == 429  # not a moment sooner
    clock.now = first_admitted_second  # a client that slept exactly Retry-After is there by now
    assert client.get("/api/v1/me").status_code == 200
