"""Cost of API-key auth + rate limiting: GET /api/v1/me against a bare DRF view (/health/live),
both served by the same gunicorn configuration `make run` uses.

    make bench B=bench/bench_api_overhead.py
"""

from __future__ import annotations

import os

from harness import gunicorn, load, machine_line, setup_django, write_section

SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
CONCURRENCY = [1, 8]


def bench_key() -> str:
    from tenants.models import Scope, Tenant
    from tenants.services import api_key_create, tenant_create

    tenant = Tenant.objects.filter(slug="bench").first() or tenant_create(
        name="Bench", slug="bench", actor="bench"
    )
    # Limits are evaluated on every request but set high enough never to refuse one.
    Tenant.objects.filter(pk=tenant.pk).update(requests_per_minute=10**9)
    _, raw_key = api_key_create(tenant=tenant, name="bench", scopes=[Scope.CHAT], actor="bench")
    return raw_key


def main() -> None:
    setup_django()
    raw_key = bench_key()
    auth = {"Authorization": f"Bearer {raw_key}"}
    rows = []
    with gunicorn() as port:
        load(port, "/api/v1/me", concurrency=2, seconds=1, headers=auth)  # warm every worker
        for concurrency in CONCURRENCY:
            bare = load(port, "/health/live", concurrency=concurrency, seconds=SECONDS)
            me = load(port, "/api/v1/me", concurrency=concurrency, seconds=SECONDS, headers=auth)
            assert set(me.statuses) == {200}, me.statuses
            rows.append((concurrency, bare, me))
    lines = [
        "## API overhead: auth + rate limit (`bench/bench_api_overhead.py`)",
        "",
        f"{machine_line()}; gunicorn as `make run` configures it; {SECONDS:.0f} s per cell; "
        "client processes share the 2 cores with the server.",
        "",
        "| concurrency | bare DRF view req/s | /api/v1/me req/s | throughput ratio (me/bare) "
        "| bare p50 / p99 ms | me p50 / p99 ms | added p50 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for concurrency, bare, me in rows:
        lines.append(
            f"| {concurrency} | {bare.rps:.0f} | {me.rps:.0f} | {me.rps / bare.rps:.2f} "
            f"| {bare.p50:.2f} / {bare.p99:.2f} | {me.p50:.2f} / {me.p99:.2f} | {me.p50 - bare.p50:.2f} |"
        )
    report = "\n".join(lines)
    print(report)
    write_section("api_overhead", report)


if __name__ == "__main__":
    main()
