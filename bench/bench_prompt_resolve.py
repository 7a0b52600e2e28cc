"""Resolve + render of a prompt on the chat hot path: per-process cached snapshots vs a database
read every time, with a running A/B experiment and a sticky end user.

    make bench B=bench/bench_prompt_resolve.py
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from harness import machine_line, setup_django, write_section

SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))


def rate(operation: Callable[[int], None]) -> tuple[float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    operation(0)
    count = 0
    with CaptureQueriesContext(connection) as queries:
        deadline = time.perf_counter() + SECONDS
        started = time.perf_counter()
        while time.perf_counter() < deadline:
            operation(count)
            count += 1
        elapsed = time.perf_counter() - started
    return count / elapsed, round(len(queries.captured_queries) / count)


def main() -> None:
    setup_django()
    from prompts import selectors
    from prompts.selectors import prompt_render, prompt_resolve
    from prompts.services import experiment_start, prompt_template_create, prompt_version_create
    from tenants.models import Tenant
    from tenants.services import tenant_create

    tenant = Tenant.objects.filter(slug="bench").first() or tenant_create(
        name="Bench", slug="bench", actor="bench"
    )
    name = f"bench-{int(time.time())}"
    template = prompt_template_create(
        tenant=tenant,
        name=name,
        kind="chat",
        actor="bench",
        messages=[
            {"role": "system", "content": "You answer for {{ company }}, tone {{ tone }}."},
            {"role": "user", "content": "{{ question }}"},
        ],
        variables={"company": None, "tone": "friendly", "question": None},
    )
    prompt_version_create(
        template=template,
        actor="bench",
        messages=[{"role": "user", "content": "{{ question }}"}],
        variables={"company": None, "tone": "friendly", "question": None},
    )
    experiment_start(template=template, variants=[(1, 50), (2, 50)], actor="bench")
    variables = {"company": "Acme", "question": "What are your opening hours?"}

    def resolve_and_render(i: int) -> None:
        resolved = prompt_resolve(tenant=tenant, name=name, user=f"user-{i % 1000}")
        prompt_render(resolved=resolved, variables=variables)

    def uncached(i: int) -> None:
        selectors.prompt_snapshots.clear()
        resolve_and_render(i)

    cached_rate, cached_queries = rate(resolve_and_render)
    uncached_rate, uncached_queries = rate(uncached)
    report = "\n".join(
        [
            "## Prompt resolve + render (`bench/bench_prompt_resolve.py`)",
            "",
            f"{machine_line()}; one process; chat template with an A/B experiment running, sticky users; "
            f"{SECONDS:.0f} s per row.",
            "",
            "| path | resolve+render per second | database queries per call |",
            "|---|---|---|",
            f"| cached snapshot (steady state) | {cached_rate:,.0f} | {cached_queries} |",
            f"| uncached (database every call) | {uncached_rate:,.0f} | {uncached_queries} |",
            "",
            f"Cached is **{cached_rate / uncached_rate:.1f}x** the uncached rate.",
        ]
    )
    print(report)
    write_section("prompt_resolve", report)


if __name__ == "__main__":
    main()
