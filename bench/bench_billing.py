"""Billing hot path and invoices, in one run:

1. reserve+settle per second: one hot tenant with 1, 4 and 16 concurrent worker processes, and
   16 workers spread over 16 tenants (real PostgreSQL, hard budget checked on every reservation);
2. database queries per reserve+settle in the steady state;
3. invoice generation for one tenant-month of 100k, 250k, 500k and 1M ledger entries.

    make bench B=bench/bench_billing.py      (runs in its own database, llm_backend_bench)
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from datetime import date
from decimal import Decimal

from harness import machine_line, setup_django, write_section

SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
INVOICE_SIZES = [100_000, 250_000, 500_000, 1_000_000]
INVOICE_MONTH = date(2020, 1, 1)  # a month no other bench writes to


def bench_tenant(slug: str):  # type: ignore[no-untyped-def]
    from billing.services import budget_update
    from tenants.models import Tenant
    from tenants.services import tenant_create

    tenant = Tenant.objects.filter(slug=slug).first() or tenant_create(name=slug, slug=slug, actor="bench")
    budget_update(tenant=tenant, actor="bench", monthly_budget_usd=Decimal("1000000"))
    tenant.monthly_token_quota = None
    return tenant


def _worker(args: tuple[str, float, int]) -> int:
    """One process: reserve+settle in a closed loop for `seconds`; returns how many it completed."""
    slug, seconds, worker = args
    from django.db import connections

    connections.close_all()  # never share the parent's connection after fork
    from billing.services import budget_reserve, budget_settle

    tenant = bench_tenant(slug)
    done = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        handle = budget_reserve(
            tenant=tenant,
            request_id=f"{slug}-{worker}-{done}-{time.time_ns()}",
            provider="openai",
            model="gpt-4o-mini",
            prompt_tokens=500,
            max_tokens=300,
        )
        budget_settle(handle=handle, input_tokens=480, cached_input_tokens=0, output_tokens=120)
        done += 1
    connections.close_all()
    return done


def reserve_settle_rate(slugs: list[str]) -> float:
    for slug in set(slugs):
        bench_tenant(slug)
    from django.db import connections

    connections.close_all()
    with multiprocessing.get_context("fork").Pool(len(slugs)) as pool:
        started = time.perf_counter()
        counts = pool.map(_worker, [(slug, SECONDS, index) for index, slug in enumerate(slugs)])
        elapsed = time.perf_counter() - started
    return sum(counts) / elapsed


def queries_per_reserve_settle() -> int:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from billing.services import budget_reserve, budget_settle

    tenant = bench_tenant("bench-hot")

    def one(request_id: str) -> None:
        handle = budget_reserve(
            tenant=tenant,
            request_id=request_id,
            provider="openai",
            model="gpt-4o-mini",
            prompt_tokens=500,
            max_tokens=300,
        )
        budget_settle(handle=handle, input_tokens=480, cached_input_tokens=0, output_tokens=120)

    one(f"warm-{time.time_ns()}")
    with CaptureQueriesContext(connection) as queries:
        one(f"count-{time.time_ns()}")
    return len(queries.captured_queries)


FILL_SQL = """
INSERT INTO billing_usageentry (tenant_id, request_id, kind, provider, model, price_id, input_tokens,
    cached_input_tokens, output_tokens, cost_nanos, saved_nanos, prompt_name, created_at)
SELECT %(tenant_id)s, 'r' || t.n, 'completion', p.provider, p.model, p.id, t.input, t.cached, t.output,
       ROUND((t.input * p.input_per_mtok + t.cached * p.cached_input_per_mtok + t.output * p.output_per_mtok)
             * 1000)::bigint,
       0, '', %(start)s::timestamptz + (t.n %% 2592000) * interval '1 second'
FROM (SELECT n, 500 + n %% 700 AS input, n %% 50 AS cached, 100 + n %% 300 AS output,
             (%(price_ids)s::bigint[])[1 + n %% cardinality(%(price_ids)s::bigint[])] AS price_id
      FROM generate_series(%(offset)s + 1, %(target)s) AS n) AS t
JOIN billing_modelprice p ON p.id = t.price_id
"""


def ledger_of(size: int):  # type: ignore[no-untyped-def]
    """A tenant whose INVOICE_MONTH holds exactly `size` entries over 4 models (created once, kept)."""
    from django.db import connection

    from billing.models import ModelPrice, UsageEntry
    from billing.services import period_bounds

    tenant = bench_tenant(f"bench-ledger-{size}")
    start, _ = period_bounds(INVOICE_MONTH)
    have = UsageEntry.objects.filter(tenant=tenant).count()
    if have < size:
        price_ids = list(
            ModelPrice.objects.filter(
                provider="openai", model__in=["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano"]
            ).values_list("pk", flat=True)
        )
        with connection.cursor() as cursor:
            cursor.execute(
                FILL_SQL,
                {
                    "tenant_id": tenant.pk,
                    "start": start,
                    "offset": have,
                    "target": size,
                    "price_ids": price_ids,
                },
            )
            cursor.execute("ANALYZE billing_usageentry")
    return tenant


def invoice_seconds(tenant) -> float:  # type: ignore[no-untyped-def]
    from billing.services import invoice_generate

    timings = []
    for _ in range(3):
        started = time.perf_counter()
        invoice = invoice_generate(tenant=tenant, period=INVOICE_MONTH, actor="bench")
        timings.append(time.perf_counter() - started)
    assert invoice.status == "draft"
    return statistics.median(timings)


def main() -> None:
    setup_django()
    rows = [
        ("1 hot tenant, 1 worker", reserve_settle_rate(["bench-hot"])),
        ("1 hot tenant, 4 workers", reserve_settle_rate(["bench-hot"] * 4)),
        ("1 hot tenant, 16 workers", reserve_settle_rate(["bench-hot"] * 16)),
        ("16 tenants, 16 workers", reserve_settle_rate([f"bench-spread-{i}" for i in range(16)])),
    ]
    queries = queries_per_reserve_settle()
    invoices = [(size, invoice_seconds(ledger_of(size))) for size in INVOICE_SIZES]
    smallest_size, smallest_time = invoices[0]
    lines = [
        "## Billing: reserve+settle and invoices (`bench/bench_billing.py`)",
        "",
        f"{machine_line()}; embedded PostgreSQL 16 on the same 2 cores; worker processes in closed loops, "
        f"{SECONDS:.0f} s per row; every reservation checks a hard monthly budget and the token quota.",
        "",
        "| workload | reserve+settle per second | vs 1 worker |",
        "|---|---|---|",
        *[f"| {name} | {rate:,.0f} | {rate / rows[0][1]:.2f}x |" for name, rate in rows],
        "",
        f"Database queries per reserve+settle in the steady state: **{queries}** (target: at most 3).",
        "",
        "| ledger entries in the month | invoice generation (median of 3) | time per entry vs 100k |",
        "|---|---|---|",
        *[
            f"| {size:,} | {seconds:.3f} s | {(seconds / size) / (smallest_time / smallest_size):.2f}x |"
            for size, seconds in invoices
        ],
    ]
    report = "\n".join(lines)
    print(report)
    write_section("billing", report)


if __name__ == "__main__":
    main()
