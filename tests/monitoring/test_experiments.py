"""Experiment results against a worked example: every number below is computed by hand in this file
with the textbook formulas and plain math (no scipy), then compared with the endpoint's."""

from __future__ import annotations

import math
import statistics
from datetime import timedelta

import pytest
from django.utils import timezone

from monitoring.experiments import MIN_SAMPLE
from monitoring.models import Feedback, FeedbackMetric, Trace
from prompts.models import Experiment
from prompts.services import experiment_start, prompt_template_create, prompt_version_create
from tenants.models import Scope
from tests.conftest import client_with_key

Z = 1.959963984540054  # the standard normal's 97.5th percentile
TOLERANCE = 1e-6
N = 200  # requests per variant, each rated once


# --- the worked example's traffic -----------------------------------------------------------------------
# control (v1): 10 errors, 4 refusals, 116 of 200 ratings positive; v2: 4 errors, 0 refusals, 142 positive.
SPEC = {
    "v1": {"errors": 10, "refusals": 4, "positive": 116, "latency": (800, 20), "cost": (1_000_000, 5)},
    "v2": {"errors": 4, "refusals": 0, "positive": 142, "latency": (700, 25), "cost": (900_000, 4)},
}


def latency_of(spec: dict, i: int) -> float:
    base, step = spec["latency"]
    return float(base + (i % 10) * step)


def cost_of(spec: dict, i: int) -> int:
    base, period = spec["cost"]
    return base + (i % period) * 100_000


def status_of(spec: dict, i: int) -> str:
    if i < spec["errors"]:
        return "error"
    if i < spec["errors"] + spec["refusals"]:
        return "refused"
    return "ok"


def seed(tenant, variant_id: int, spec: dict, *, rate: bool = True) -> None:
    now = timezone.now()
    traces = Trace.objects.bulk_create(
        Trace(
            tenant=tenant,
            request_id=f"{variant_id}-{i}",
            endpoint="chat",
            status=status_of(spec, i),
            prompt_name="faq",
            prompt_variant=variant_id,
            end_user=f"user-{i % 50}",
            input_tokens=500 + i % 3,
            output_tokens=100 + i % 7,
            cost_nanos=cost_of(spec, i),
            latency_ms=latency_of(spec, i),
            time_to_first_token_ms=float(200 + i % 9) if i % 2 == 0 else None,
            created_at=now - timedelta(seconds=i),
        )
        for i in range(N)
    )
    if rate:
        Feedback.objects.bulk_create(
            Feedback(
                tenant=tenant,
                trace=trace,
                name="rating",
                score=1 if i < spec["positive"] else -1,
                end_user=trace.end_user,
                prompt_variant=variant_id,
            )
            for i, trace in enumerate(traces)
        )


# --- the textbook formulas, by hand --------------------------------------------------------------------


def wilson(k: int, n: int) -> tuple[float, float]:
    p = k / n
    center = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return center - half, center + half


def two_proportion(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float, float, float]:
    """(z, two-sided p, low, high of p1 - p2): pooled z-test, unpooled interval."""
    p1, p2 = k1 / n1, k2 / n2
    pooled = (k1 + k2) / (n1 + n2)
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    p_value = math.erfc(abs(z) / math.sqrt(2))
    half = Z * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return z, p_value, p1 - p2 - half, p1 - p2 + half


def t_density(x: float, df: float) -> float:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def t_two_sided_p(t: float, df: float, steps: int = 20_000) -> float:
    """1 - 2 * integral of the t density over [0, |t|], by Simpson's rule."""
    h = abs(t) / steps
    total = t_density(0, df) + t_density(abs(t), df)
    total += sum((4 if k % 2 else 2) * t_density(k * h, df) for k in range(1, steps))
    return 1 - 2 * total * h / 3


def t_quantile_975(df: float) -> float:
    low, high = 1.9, 2.5
    for _ in range(60):  # bisection on p(|T| > q) = 0.05
        middle = (low + high) / 2
        low, high = (middle, high) if t_two_sided_p(middle, df, 2000) > 0.05 else (low, middle)
    return (low + high) / 2


def welch(a: list[float], b: list[float]) -> tuple[float, float, float, float, float]:
    """(t, df, two-sided p, low, high of mean(a) - mean(b))."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile_975(df) * math.sqrt(va + vb)
    return t, df, t_two_sided_p(t, df), diff - half, diff + half


def percentile_cont(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def proportions_sample_size(p1: float, difference: float) -> int:
    p2 = p1 + difference
    z_beta = 0.8416212335729143  # the standard normal's 80th percentile
    p_bar = (p1 + p2) / 2
    root = Z * math.sqrt(2 * p_bar * (1 - p_bar)) + z_beta * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(root**2 / difference**2)


# --- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture
def experiment(tenant) -> Experiment:
    template = prompt_template_create(tenant=tenant, name="faq", kind="text", text="a {{ q }}", actor="t")
    prompt_version_create(template=template, text="b {{ q }}", actor="t")
    return experiment_start(template=template, variants=[(1, 50), (2, 50)], actor="t")


@pytest.fixture
def variant_ids(experiment) -> dict[str, int]:
    return {f"v{v.version.number}": v.pk for v in experiment.variants.select_related("version")}


@pytest.fixture
def reader(tenant, make_key):
    return client_with_key(make_key(tenant, scopes=[Scope.TRACES_READ])[1])


def results_of(client, experiment: Experiment) -> dict:
    response = client.get(f"/api/v1/prompts/faq/experiments/{experiment.pk}/results")
    assert response.status_code == 200, response.json()
    return response.json()


def close(actual: float, expected: float) -> bool:
    return actual == pytest.approx(expected, abs=TOLERANCE, rel=TOLERANCE)


# --- tests ---------------------------------------------------------------------------------------------


def test_results_match_the_worked_example(tenant, experiment, variant_ids, reader):
    for label, spec in SPEC.items():
        seed(tenant, variant_ids[label], spec)
    body = results_of(reader, experiment)
    control, v2 = body["variants"]
    assert (control["version"], control["is_control"], v2["version"], v2["is_control"]) == (1, True, 2, False)
    assert body["control"] == variant_ids["v1"]
    assert (control["weight"], v2["weight"]) == (50, 50)

    # Per variant: counts, Wilson intervals, percentiles over successful requests, means.
    for row, spec in ((control, SPEC["v1"]), (v2, SPEC["v2"])):
        assert (row["requests"], row["end_users"], row["errors"], row["refusals"]) == (
            N,
            50,
            spec["errors"],
            spec["refusals"],
        )
        low, high = wilson(spec["errors"], N)
        assert close(row["error_rate"]["value"], spec["errors"] / N)
        assert close(row["error_rate"]["low"], low)
        assert close(row["error_rate"]["high"], high)
        ok = [i for i in range(N) if status_of(spec, i) == "ok"]
        latencies = [latency_of(spec, i) for i in ok]
        assert close(row["latency_ms"]["p50"], percentile_cont(latencies, 0.5))
        assert close(row["latency_ms"]["p95"], percentile_cont(latencies, 0.95))
        ttfts = [float(200 + i % 9) for i in ok if i % 2 == 0]
        assert close(row["time_to_first_token_ms"]["p95"], percentile_cont(ttfts, 0.95))
        assert close(row["latency_mean_ms"]["value"], statistics.fmean(latencies))
        costs = [cost_of(spec, i) / 1e9 for i in range(N)]
        assert close(row["cost_per_request_usd"]["value"], statistics.fmean(costs))
        assert close(row["output_tokens_mean"], statistics.fmean(100 + i % 7 for i in range(N)))
        (rating,) = row["feedback"]
        assert (rating["name"], rating["kind"], rating["count"], rating["positive"]) == (
            "rating",
            "thumbs",
            N,
            spec["positive"],
        )
        low, high = wilson(spec["positive"], N)
        assert close(rating["positive_rate"]["low"], low)
        assert close(rating["positive_rate"]["high"], high)

    assert control["comparisons"] == []
    comparisons = {c["metric"]: c for c in v2["comparisons"]}
    assert list(comparisons) == ["rating", "error rate", "latency", "cost per request"]

    # Rating: 71% vs 58%, pooled two-proportion z-test.
    rating = comparisons["rating"]
    z, p_value, low, high = two_proportion(142, N, 116, N)
    assert rating["test"] == "two_proportion_z"
    assert close(rating["statistic"], z)
    assert close(rating["p_value"], p_value)
    assert close(rating["difference"]["value"], 0.13)
    assert close(rating["difference"]["low"], low)
    assert close(rating["difference"]["high"], high)
    assert rating["significant"] is True
    assert rating["verdict"] == f"v2 better than v1 on rating: 71% vs 58%, p = {p_value:.2g}"

    # Error rate: 2.0% vs 5.0%, not significant; sized for a 1-point difference from 5%.
    errors = comparisons["error rate"]
    z, p_value, low, high = two_proportion(4, N, 10, N)
    assert close(errors["statistic"], z)
    assert close(errors["p_value"], p_value)
    assert close(errors["difference"]["low"], low)
    assert errors["significant"] is False
    more = proportions_sample_size(0.05, 0.01) - N
    assert errors["verdict"] == (
        f"no significant difference on error rate yet: 2.0% vs 5.0%, p = {p_value:.2f}; "
        f"need about {more:,} more requests per variant for a 1-point difference"
    )

    # Latency (successful requests) and cost per request: Welch's t-test.
    for metric, values in (
        ("latency", lambda spec: [latency_of(spec, i) for i in range(N) if status_of(spec, i) == "ok"]),
        ("cost per request", lambda spec: [cost_of(spec, i) / 1e9 for i in range(N)]),
    ):
        t, _, p_value, low, high = welch(values(SPEC["v2"]), values(SPEC["v1"]))
        comparison = comparisons[metric]
        assert comparison["test"] == "welch_t"
        assert close(comparison["statistic"], t)
        assert close(comparison["p_value"], p_value)
        assert close(comparison["difference"]["low"], low)
        assert close(comparison["difference"]["high"], high)
        assert comparison["significant"] is True
        assert comparison["verdict"].startswith(f"v2 better than v1 on {metric}: ")
    assert comparisons["latency"]["verdict"].endswith(", p < 0.001")


def test_no_verdict_below_the_minimum_sample(tenant, experiment, variant_ids, reader):
    for label, spec in SPEC.items():
        seed(tenant, variant_ids[label], spec, rate=False)
    FeedbackMetric.objects.create(tenant=tenant, name="helpfulness", kind="scale", scale_min=1, scale_max=5)
    for label, score in (("v1", 3.0), ("v2", 4.0)):
        traces = Trace.objects.filter(prompt_variant=variant_ids[label])[: MIN_SAMPLE - 1]
        Feedback.objects.bulk_create(
            Feedback(
                tenant=tenant,
                trace=trace,
                name="helpfulness",
                score=score + (i % 2) * 0.5,
                prompt_variant=variant_ids[label],
            )
            for i, trace in enumerate(traces)
        )
    body = results_of(reader, experiment)
    v2 = body["variants"][1]
    assert body["min_sample"] == MIN_SAMPLE
    (helpfulness,) = v2["feedback"]
    assert (helpfulness["kind"], helpfulness["count"], helpfulness["positive_rate"]) == ("scale", 99, None)
    scores = [4.0 + (i % 2) * 0.5 for i in range(MIN_SAMPLE - 1)]
    half = t_quantile_975(len(scores) - 1) * math.sqrt(statistics.variance(scores) / len(scores))
    assert close(helpfulness["mean_score"]["value"], statistics.fmean(scores))
    assert close(helpfulness["mean_score"]["high"], statistics.fmean(scores) + half)
    comparison = v2["comparisons"][0]
    assert comparison["metric"] == "helpfulness"
    assert comparison["test"] == "welch_t"
    assert comparison["p_value"] < 0.001  # a clear difference, and still no verdict
    assert comparison["significant"] is None
    assert comparison["verdict"] == (
        "not enough data yet: need at least 100 rated requests per variant before a verdict (1 more)"
    )


def test_sample_size_message_when_nothing_is_rated(tenant, experiment, variant_ids, reader):
    Feedback.objects.create(
        tenant=tenant,
        trace=Trace.objects.create(
            tenant=tenant, request_id="r", endpoint="chat", status="ok", created_at=timezone.now()
        ),
        name="rating",
        score=1,
        prompt_variant=variant_ids["v1"],
    )
    body = results_of(reader, experiment)
    rating = body["variants"][1]["comparisons"][0]
    assert (rating["n_variant"], rating["n_control"], rating["p_value"]) == (0, 1, None)
    needed = proportions_sample_size(1.0 - 0.05, 0.05)  # around a 100% control rate, sized downwards
    assert rating["verdict"] == (
        f"not enough data yet: need about {needed:,} more rated requests per variant for a 5-point difference"
    )


def test_other_tenants_traces_do_not_count(tenant, other_tenant, experiment, variant_ids, reader):
    seed(tenant, variant_ids["v1"], SPEC["v1"], rate=False)
    seed(other_tenant, variant_ids["v2"], SPEC["v2"])  # same variant id, another tenant's history
    body = results_of(reader, experiment)
    control, v2 = body["variants"]
    assert (control["requests"], v2["requests"]) == (N, 0)
    assert v2["feedback"] == control["feedback"] == []
    assert v2["latency_ms"] == {"p50": None, "p95": None}
    assert [c["p_value"] for c in v2["comparisons"]] == [None, None, None]


def test_results_need_the_traces_read_scope(tenant, experiment, make_key):
    url = f"/api/v1/prompts/faq/experiments/{experiment.pk}/results"
    chat = client_with_key(make_key(tenant, scopes=[Scope.CHAT])[1])
    refused = chat.get(url)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"
    assert client_with_key(make_key(tenant, scopes=[Scope.ADMIN])[1]).get(url).status_code == 200


@pytest.mark.parametrize("experiment_id", ["0", "99999999", "9" * 30])
def test_unknown_experiment_is_a_404(experiment, reader, experiment_id):
    response = reader.get(f"/api/v1/prompts/faq/experiments/{experiment_id}/results")
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "experiment_id"
