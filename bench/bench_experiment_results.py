"""Experiment results at scale: GET /api/v1/prompts/{name}/experiments/{id}/results for a tenant
holding 1,000,000 traces (20% of the experiment's traces rated), in two cases:

1. a typical experiment: 100,000 of the tenant's 1,000,000 traces belong to it, the rest are history;
2. the worst case: all 1,000,000 traces belong to the experiment.

The endpoint runs in-process (auth, the two SQL aggregates, the statistics, JSON), median of 5 after
one warm-up call (the first loads scipy).

    make bench B=bench/bench_experiment_results.py      (runs in its own database, llm_backend_bench)
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from harness import machine_line, setup_django

TRACES = 1_000_000
RUNS = 5
RATED_SHARE = 5  # one trace in 5 of the experiment's is rated

FILL_TRACES_SQL = """
INSERT INTO monitoring_trace (id, tenant_id, request_id, endpoint, status, error, provider, model,
    prompt_name, prompt_version, prompt_variant, end_user, cached, streamed, input_tokens,
    cached_input_tokens, output_tokens, cost_nanos, latency_ms, time_to_first_token_ms, attempts,
    created_at)
SELECT gen_random_uuid(), %(tenant_id)s, 'r' || n, 'chat',
       CASE WHEN n %% 50 = 0 THEN 'error' WHEN n %% 97 = 0 THEN 'refused' ELSE 'ok' END,
       '', 'openai', 'gpt-4o-mini',
       CASE WHEN n <= %(in_experiment)s THEN 'bench-ab' ELSE 'other' END,
       CASE WHEN n <= %(in_experiment)s THEN 1 + n %% 2 END,
       CASE WHEN n <= %(in_experiment)s THEN (%(variants)s::bigint[])[1 + n %% 2] END,
       'user-' || (n %% 5000), false, n %% 2 = 0, 400 + n %% 300, 0, 80 + n %% 200,
       800000 + (n %% 1000) * 1000 + (n %% 2) * 50000,
       500 + (n * 7919) %% 1500 + (n %% 2) * 40,
       CASE WHEN n %% 2 = 0 THEN 150 + (n * 31) %% 300 END,
       1, now() - n * interval '1 second'
FROM generate_series(%(offset)s::bigint + 1, %(target)s::bigint) AS n
"""

FILL_FEEDBACK_SQL = """
INSERT INTO monitoring_feedback (tenant_id, trace_id, name, score, comment, end_user, prompt_name,
    prompt_version, prompt_variant, created_at, updated_at)
SELECT tenant_id, id, 'rating',
       CASE WHEN (hashtext(id::text) & 1023) < 600 + prompt_version * 20 THEN 1 ELSE -1 END,
       '', end_user, prompt_name, prompt_version, prompt_variant, created_at, created_at
FROM monitoring_trace
WHERE tenant_id = %(tenant_id)s AND prompt_variant IS NOT NULL AND hashtext(id::text) %% %(share)s = 0
"""


def experiment_tenant(slug: str, in_experiment: int):  # type: ignore[no-untyped-def]
    """A tenant with TRACES traces, `in_experiment` of them in a 50/50 experiment (created once, kept)."""
    from django.db import connection

    from monitoring.models import Trace
    from prompts.models import PromptTemplate
    from prompts.services import experiment_start, prompt_template_create, prompt_version_create
    from tenants.models import Tenant
    from tenants.services import tenant_create

    tenant = Tenant.objects.filter(slug=slug).first() or tenant_create(name=slug, slug=slug, actor="bench")
    template = PromptTemplate.objects.filter(tenant=tenant, name="bench-ab").first()
    if template is None:
        template = prompt_template_create(
            tenant=tenant, name="bench-ab", kind="text", text="a {{ q }}", actor="bench"
        )
        prompt_version_create(template=template, text="b {{ q }}", actor="bench")
        experiment_start(template=template, variants=[(1, 50), (2, 50)], actor="bench")
    experiment = template.experiments.get()
    variants = list(experiment.variants.order_by("id").values_list("pk", flat=True))
    have = Trace.objects.filter(tenant=tenant).count()
    if have < TRACES:
        with connection.cursor() as cursor:
            params: dict[str, Any] = {
                "tenant_id": tenant.pk,
                "in_experiment": in_experiment,
                "variants": variants,
                "offset": have,
                "target": TRACES,
            }
            cursor.execute(FILL_TRACES_SQL, params)
            cursor.execute(FILL_FEEDBACK_SQL, {"tenant_id": tenant.pk, "share": RATED_SHARE})
            cursor.execute("VACUUM ANALYZE monitoring_trace")
            cursor.execute("VACUUM ANALYZE monitoring_feedback")
    return tenant, experiment


def results_timings(tenant, experiment) -> tuple[list[float], dict]:  # type: ignore[no-untyped-def]
    from django.test import Client

    from tenants.models import Scope
    from tenants.services import api_key_create

    _, raw_key = api_key_create(tenant=tenant, name="bench", scopes=[Scope.TRACES_READ], actor="bench")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    url = f"/api/v1/prompts/bench-ab/experiments/{experiment.pk}/results"
    response = client.get(url)  # warm-up: loads scipy, fills the buffer cache
    assert response.status_code == 200, response.content
    timings = []
    for _ in range(RUNS):
        started = time.perf_counter()
        response = client.get(url)
        timings.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    return timings, response.json()


def main() -> None:
    setup_django()
    from django.conf import settings

    settings.ALLOWED_HOSTS = ["*"]
    cases = [
        ("100,000 in the experiment", experiment_tenant("bench-experiment-typical", 100_000)),
        ("all 1,000,000 in the experiment", experiment_tenant("bench-experiment-all", TRACES)),
    ]
    rows = []
    for name, (tenant, experiment) in cases:
        timings, body = results_timings(tenant, experiment)
        requests = sum(variant["requests"] for variant in body["variants"])
        rated = sum(variant["feedback"][0]["count"] for variant in body["variants"])
        verdict = body["variants"][1]["comparisons"][0]["verdict"]
        rows.append((name, requests, rated, statistics.median(timings), max(timings), verdict))
    lines = [
        "## Experiment results at 1M traces (`bench/bench_experiment_results.py`)",
        "",
        f"{machine_line()}; embedded PostgreSQL 16 on the same cores; a tenant of {TRACES:,} traces, "
        f"one in {RATED_SHARE} of the experiment's rated; the endpoint in-process, median of {RUNS} "
        "after a warm-up.",
        "",
        "| traces of the tenant's 1,000,000 | requests aggregated | ratings | results median | max |",
        "|---|---|---|---|---|",
        *[
            f"| {name} | {requests:,} | {rated:,} | {median:.0f} ms | {worst:.0f} ms |"
            for name, requests, rated, median, worst, _ in rows
        ],
        "",
        f"Verdict on rating, worst case: {rows[-1][5]}",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
