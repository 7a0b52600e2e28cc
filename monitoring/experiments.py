"""Experiment results: per-variant traffic and feedback statistics from SQL aggregates, and the
significance of each variant's difference from the control.

Everything is computed from a few numbers per variant that PostgreSQL aggregates in three queries
(counts, means, sample variances, percentiles), so the cost grows with the experiment's rows read
through an index, not with the tenant's history. The tests and p-values come from scipy.stats:

- proportions (positive feedback, error and refusal rates): Wilson 95% interval per variant; between
  a variant and the control, the pooled two-proportion z-test and the unpooled (Wald) 95% interval
  of the difference;
- means (latency, cost, scale feedback): Student t 95% interval per variant; between a variant and
  the control, Welch's t-test and its Welch-Satterthwaite 95% interval of the difference.

Sample sizes for the "not enough data" verdicts use the standard power calculation at alpha 0.05 and
power 0.8: for two proportions (Fleiss, no continuity correction) around the control's rate, and for
two means from the pooled sample variance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.db import connection, transaction
from scipy import stats

from monitoring.models import Feedback, FeedbackKind, FeedbackMetric, Trace, TraceStatus
from tenants.models import Tenant

ALPHA = 0.05
POWER = 0.8
# No verdict before this many observations (requests, or scores of a feedback metric) per variant:
# below it the normal approximations behind the tests are not to be trusted.
MIN_SAMPLE = 100
# The smallest differences the "need about N more" messages size the sample for.
FEEDBACK_DIFFERENCE = 0.05  # thumbs: 5 points of positive rate
ERROR_RATE_DIFFERENCE = 0.01  # 1 point of error rate
MEAN_RELATIVE_DIFFERENCE = 0.10  # latency and cost: 10% of the control's mean
SCALE_RANGE_DIFFERENCE = 0.05  # scale feedback: 5% of the scale's range
NANOS_PER_USD = 1_000_000_000
SORT_MEMORY = "64MB"


@dataclass(frozen=True)
class VariantRef:
    """A variant to report on: its id (the traces' and feedback's prompt_variant) and a short label
    for verdicts ("v2")."""

    id: int
    label: str


@dataclass(frozen=True)
class Estimate:
    value: float | None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class MetricResult:
    """One feedback metric of one variant."""

    name: str
    kind: str
    count: int
    positive: int | None  # thumbs only
    positive_rate: Estimate | None  # thumbs only
    mean_score: Estimate
    score_variance: float | None


@dataclass(frozen=True)
class Comparison:
    """One metric of a variant against the control."""

    metric: str
    test: str  # "two_proportion_z" or "welch_t"
    n_variant: int
    n_control: int
    variant_value: float | None
    control_value: float | None
    difference: Estimate  # variant minus control
    statistic: float | None
    p_value: float | None
    significant: bool | None  # None: below the minimum sample, no verdict
    verdict: str


@dataclass
class VariantResult:
    ref: VariantRef
    is_control: bool = False
    requests: int = 0
    end_users: int = 0
    errors: int = 0
    refusals: int = 0
    ok: int = 0
    error_rate: Estimate = field(default_factory=lambda: Estimate(None))
    refusal_rate: Estimate = field(default_factory=lambda: Estimate(None))
    latency_p50: float | None = None
    latency_p95: float | None = None
    latency: Estimate = field(default_factory=lambda: Estimate(None))
    latency_var: float | None = None
    ttft_p50: float | None = None
    ttft_p95: float | None = None
    input_tokens_mean: float | None = None
    output_tokens_mean: float | None = None
    cost_usd: Estimate = field(default_factory=lambda: Estimate(None))
    cost_var: float | None = None
    feedback: list[MetricResult] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)


# --- statistics over summaries ---------------------------------------------------------------------


def wilson_interval(successes: int, n: int) -> Estimate:
    if n == 0:
        return Estimate(None)
    interval = stats.binomtest(successes, n).proportion_ci(confidence_level=1 - ALPHA, method="wilson")
    return Estimate(successes / n, float(interval.low), float(interval.high))


def mean_interval(n: int, mean: float | None, variance: float | None) -> Estimate:
    if n == 0 or mean is None:
        return Estimate(None)
    if n < 2 or variance is None:
        return Estimate(mean)
    half = stats.t.ppf(1 - ALPHA / 2, n - 1) * math.sqrt(variance / n)
    return Estimate(mean, mean - half, mean + half)


@dataclass(frozen=True)
class TestResult:
    difference: Estimate
    statistic: float | None
    p_value: float | None


def two_proportion_test(k1: int, n1: int, k2: int, n2: int) -> TestResult:
    """Sample 1 against sample 2: pooled z-test, unpooled 95% interval of p1 - p2."""
    p1, p2 = k1 / n1, k2 / n2
    diff = p1 - p2
    pooled = (k1 + k2) / (n1 + n2)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    half = stats.norm.ppf(1 - ALPHA / 2) * se
    if se_pooled == 0:  # both all-zero or all-one: identical, nothing to test
        return TestResult(Estimate(diff, diff, diff), None, 1.0)
    z = diff / se_pooled
    return TestResult(Estimate(diff, diff - half, diff + half), z, float(2 * stats.norm.sf(abs(z))))


def welch_test(n1: int, m1: float, v1: float, n2: int, m2: float, v2: float) -> TestResult:
    """Sample 1 against sample 2: Welch's t-test, 95% interval of m1 - m2 on Welch-Satterthwaite df."""
    diff = m1 - m2
    a, b = v1 / n1, v2 / n2
    if a + b == 0:  # no variation at all: the means differ or not, with certainty
        return TestResult(Estimate(diff, diff, diff), None, 1.0 if diff == 0 else 0.0)
    result = stats.ttest_ind_from_stats(m1, math.sqrt(v1), n1, m2, math.sqrt(v2), n2, equal_var=False)
    df = (a + b) ** 2 / (a**2 / (n1 - 1) + b**2 / (n2 - 1))
    half = stats.t.ppf(1 - ALPHA / 2, df) * math.sqrt(a + b)
    return TestResult(Estimate(diff, diff - half, diff + half), float(result.statistic), float(result.pvalue))


def proportions_sample_size(baseline: float, difference: float) -> int:
    """Observations per group to detect `difference` from `baseline` (two-sided alpha, power)."""
    p1 = baseline
    p2 = p1 + difference if p1 + difference <= 1 else p1 - difference
    z_alpha, z_beta = stats.norm.ppf(1 - ALPHA / 2), stats.norm.ppf(POWER)
    p_bar = (p1 + p2) / 2
    root = z_alpha * math.sqrt(2 * p_bar * (1 - p_bar)) + z_beta * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))
    return math.ceil(root**2 / difference**2)


def means_sample_size(variance: float, difference: float) -> int:
    z_alpha, z_beta = stats.norm.ppf(1 - ALPHA / 2), stats.norm.ppf(POWER)
    return math.ceil(2 * (z_alpha + z_beta) ** 2 * variance / difference**2)


# --- verdicts ----------------------------------------------------------------------------------------


def _p(p_value: float | None) -> str:
    if p_value is None:
        return "p = n/a"
    return (
        "p < 0.001" if p_value < 0.001 else f"p = {p_value:.2g}" if p_value < 0.01 else f"p = {p_value:.2f}"
    )


@dataclass(frozen=True)
class Framing:
    """How to talk about one metric: its name, how to show a value, which direction is better, the
    difference the sample is sized for and what one observation is called."""

    metric: str
    show: str  # "percent", "ms", "usd" or "number"
    higher_is_better: bool
    target: str  # "a 5-point difference"
    unit: str  # "rated requests"
    difference: float | None = None  # proportions: the difference the sample is sized for

    def value(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        if self.show == "percent":
            return f"{value:.0%}" if value >= 0.1 or value == 0 else f"{value:.1%}"
        if self.show == "ms":
            return f"{value:,.0f} ms"
        if self.show == "usd":
            return f"${value:.6f}".rstrip("0").rstrip(".") if value else "$0"
        return f"{value:.3g}"


def verdict(
    framing: Framing, variant: str, control: str, comparison: Comparison, needed: int | None
) -> tuple[bool | None, str]:
    """(significant, sentence). `needed` is the per-variant sample for the framing's target
    difference, None when it cannot be estimated yet."""
    smallest = min(comparison.n_variant, comparison.n_control)
    more = None if needed is None else needed - smallest
    need = f"need about {more or 0:,} more {framing.unit} per variant for {framing.target}"
    if smallest < MIN_SAMPLE:
        if needed is not None and needed > MIN_SAMPLE:
            return None, f"not enough data yet: {need}"
        return None, (
            f"not enough data yet: need at least {MIN_SAMPLE} {framing.unit} per variant before a verdict "
            f"({MIN_SAMPLE - smallest:,} more)"
        )
    values = f"{framing.value(comparison.variant_value)} vs {framing.value(comparison.control_value)}"
    if comparison.p_value is not None and comparison.p_value < ALPHA:
        better = (comparison.difference.value or 0) > 0
        if not framing.higher_is_better:
            better = not better
        word = "better" if better else "worse"
        return (
            True,
            f"{variant} {word} than {control} on {framing.metric}: {values}, {_p(comparison.p_value)}",
        )
    shown = f"{values}, {_p(comparison.p_value)}"
    if more is not None and more > 0:
        return False, f"no significant difference on {framing.metric} yet: {shown}; {need}"
    if more is None:
        return False, f"no significant difference on {framing.metric} yet: {shown}"
    return (
        False,
        f"no significant difference on {framing.metric}: {shown}; enough data to detect {framing.target}",
    )


# --- the selector ------------------------------------------------------------------------------------

TRAFFIC_SQL = f"""
SELECT prompt_variant,
       count(*),
       count(*) FILTER (WHERE status = '{TraceStatus.ERROR.value}'),
       count(*) FILTER (WHERE status = '{TraceStatus.REFUSED.value}'),
       count(*) FILTER (WHERE status = '{TraceStatus.OK.value}'),
       percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY latency_ms)
           FILTER (WHERE status = '{TraceStatus.OK.value}'),
       avg(latency_ms) FILTER (WHERE status = '{TraceStatus.OK.value}'),
       var_samp(latency_ms) FILTER (WHERE status = '{TraceStatus.OK.value}'),
       percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY time_to_first_token_ms)
           FILTER (WHERE status = '{TraceStatus.OK.value}'),
       avg(input_tokens::float8),
       avg(output_tokens::float8),
       avg(cost_nanos::float8),
       var_samp(cost_nanos::float8)
FROM {Trace._meta.db_table}
WHERE tenant_id = %s AND prompt_variant = ANY(%s::bigint[]) AND prompt_variant IS NOT NULL
GROUP BY prompt_variant
"""  # noqa: S608  # nosec B608  # table name and status constants; values are bound parameters

# Apart, and hashed rather than sorted: counting distinct end users in the aggregate above sorted
# every row by end user, which took longer than everything else together (2.5 s of 5 at 1M traces).
END_USERS_SQL = f"""
SELECT prompt_variant, count(*)
FROM (
    SELECT DISTINCT prompt_variant, end_user
    FROM {Trace._meta.db_table}
    WHERE tenant_id = %s AND prompt_variant = ANY(%s::bigint[]) AND prompt_variant IS NOT NULL
      AND end_user <> ''
) AS users
GROUP BY prompt_variant
"""  # noqa: S608  # nosec B608  # table and column names come from the models; values are bound parameters

FEEDBACK_SQL = f"""
SELECT prompt_variant, name, count(*), count(*) FILTER (WHERE score > 0), avg(score), var_samp(score)
FROM {Feedback._meta.db_table}
WHERE tenant_id = %s AND prompt_variant = ANY(%s::bigint[])
GROUP BY prompt_variant, name
ORDER BY name
"""  # noqa: S608  # nosec B608  # table and column names come from the models; values are bound parameters


def _fill_traffic(result: VariantResult, row: Sequence) -> None:
    (_, requests, errors, refusals, ok, latency, lat_mean, lat_var, ttft, tin, tout, cost, cvar) = row
    result.requests, result.errors, result.refusals, result.ok = requests, errors, refusals, ok
    result.error_rate = wilson_interval(errors, requests)
    result.refusal_rate = wilson_interval(refusals, requests)
    result.latency_p50, result.latency_p95 = latency or (None, None)
    result.latency = mean_interval(ok, lat_mean, lat_var)
    result.latency_var = lat_var
    result.ttft_p50, result.ttft_p95 = ttft or (None, None)
    result.input_tokens_mean, result.output_tokens_mean = tin, tout
    usd_var = None if cvar is None else cvar / NANOS_PER_USD**2
    result.cost_usd = mean_interval(requests, cost / NANOS_PER_USD, usd_var)
    result.cost_var = usd_var


def _metric_result(name: str, metric: FeedbackMetric | None, row: Sequence) -> MetricResult:
    count, positive, average, variance = row
    mean = mean_interval(count, average, variance)
    if metric is None or metric.kind == FeedbackKind.THUMBS:
        rate = wilson_interval(positive, count)
        return MetricResult(name, FeedbackKind.THUMBS, count, positive, rate, mean, variance)
    return MetricResult(name, FeedbackKind.SCALE, count, None, None, mean, variance)


def experiment_results(
    *, tenant: Tenant, variants: Sequence[VariantRef], control: int
) -> list[VariantResult]:
    """Each variant's statistics, and (but for the control) its comparisons with the control."""
    results = {ref.id: VariantResult(ref) for ref in variants}
    ids = list(results)
    feedback_rows: dict[tuple[int, str], Sequence] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        # The percentiles and the distinct end users sort the experiment's rows: in memory, not in
        # temporary files, up to about a million traces.
        cursor.execute(f"SET LOCAL work_mem = '{SORT_MEMORY}'")
        cursor.execute(TRAFFIC_SQL, [tenant.pk, ids])
        for row in cursor.fetchall():
            _fill_traffic(results[row[0]], row)
        cursor.execute(END_USERS_SQL, [tenant.pk, ids])
        for variant_id, end_users in cursor.fetchall():
            results[variant_id].end_users = end_users
        cursor.execute(FEEDBACK_SQL, [tenant.pk, ids])
        for variant_id, name, *rest in cursor.fetchall():
            feedback_rows[(variant_id, name)] = rest
    names = sorted({name for _, name in feedback_rows})
    metrics = {m.name: m for m in FeedbackMetric.objects.filter(tenant=tenant, name__in=names)}
    for result in results.values():
        for name in names:
            row = feedback_rows.get((result.ref.id, name), (0, 0, None, None))
            result.feedback.append(_metric_result(name, metrics.get(name), row))
    baseline = results[control]
    baseline.is_control = True
    for result in results.values():
        if result is not baseline:
            result.comparisons = compare(result, baseline, metrics)
    return list(results.values())


# --- comparisons -------------------------------------------------------------------------------------


def _proportion_comparison(
    framing: Framing, variant: VariantResult, control: VariantResult, k1: int, n1: int, k2: int, n2: int
) -> Comparison:
    if n1 == 0 or n2 == 0:
        test = TestResult(Estimate(None), None, None)
    else:
        test = two_proportion_test(k1, n1, k2, n2)
    comparison = Comparison(
        framing.metric,
        "two_proportion_z",
        n1,
        n2,
        k1 / n1 if n1 else None,
        k2 / n2 if n2 else None,
        test.difference,
        test.statistic,
        test.p_value,
        None,
        "",
    )
    assert framing.difference is not None
    needed = proportions_sample_size(k2 / n2 if n2 else 0.5, framing.difference)
    return _with_verdict(framing, variant, control, comparison, needed)


def _mean_comparison(
    framing: Framing,
    variant: VariantResult,
    control: VariantResult,
    sample1: tuple[int, float | None, float | None],
    sample2: tuple[int, float | None, float | None],
    difference: float | None,
) -> Comparison:
    (n1, m1, v1), (n2, m2, v2) = sample1, sample2
    if n1 < 2 or n2 < 2 or m1 is None or m2 is None or v1 is None or v2 is None:
        test = TestResult(Estimate(None), None, None)
        needed = None
    else:
        test = welch_test(n1, m1, v1, n2, m2, v2)
        pooled = (v1 + v2) / 2
        needed = means_sample_size(pooled, difference) if difference else None
    comparison = Comparison(
        framing.metric, "welch_t", n1, n2, m1, m2, test.difference, test.statistic, test.p_value, None, ""
    )
    return _with_verdict(framing, variant, control, comparison, needed)


def _with_verdict(
    framing: Framing,
    variant: VariantResult,
    control: VariantResult,
    comparison: Comparison,
    needed: int | None,
) -> Comparison:
    significant, sentence = verdict(framing, variant.ref.label, control.ref.label, comparison, needed)
    return Comparison(**{**comparison.__dict__, "significant": significant, "verdict": sentence})


def compare(
    variant: VariantResult, control: VariantResult, metrics: dict[str, FeedbackMetric]
) -> list[Comparison]:
    comparisons = []
    for mine, theirs in zip(variant.feedback, control.feedback, strict=True):
        if mine.kind == FeedbackKind.THUMBS:
            framing = Framing(
                mine.name, "percent", True, "a 5-point difference", "rated requests", FEEDBACK_DIFFERENCE
            )
            comparisons.append(
                _proportion_comparison(
                    framing,
                    variant,
                    control,
                    mine.positive or 0,
                    mine.count,
                    theirs.positive or 0,
                    theirs.count,
                )
            )
            continue
        step = _scale_step(metrics.get(mine.name))
        target = "a small difference" if step is None else f"a difference of {step:.3g}"
        framing = Framing(mine.name, "number", True, target, "rated requests")
        comparisons.append(
            _mean_comparison(
                framing,
                variant,
                control,
                (mine.count, mine.mean_score.value, mine.score_variance),
                (theirs.count, theirs.mean_score.value, theirs.score_variance),
                step,
            )
        )
    errors = Framing(
        "error rate", "percent", False, "a 1-point difference", "requests", ERROR_RATE_DIFFERENCE
    )
    comparisons.append(
        _proportion_comparison(
            errors, variant, control, variant.errors, variant.requests, control.errors, control.requests
        )
    )
    relative = f"a {MEAN_RELATIVE_DIFFERENCE:.0%} difference"
    latency = Framing("latency", "ms", False, relative, "successful requests")
    control_latency = control.latency.value
    comparisons.append(
        _mean_comparison(
            latency,
            variant,
            control,
            (variant.ok, variant.latency.value, variant.latency_var),
            (control.ok, control_latency, control.latency_var),
            None if control_latency is None else control_latency * MEAN_RELATIVE_DIFFERENCE,
        )
    )
    cost = Framing("cost per request", "usd", False, relative, "requests")
    control_cost = control.cost_usd.value
    comparisons.append(
        _mean_comparison(
            cost,
            variant,
            control,
            (variant.requests, variant.cost_usd.value, variant.cost_var),
            (control.requests, control_cost, control.cost_var),
            None if control_cost is None else control_cost * MEAN_RELATIVE_DIFFERENCE,
        )
    )
    return comparisons


def _scale_step(metric: FeedbackMetric | None) -> float | None:
    if metric is None or metric.scale_min is None or metric.scale_max is None:
        return None
    return (metric.scale_max - metric.scale_min) * SCALE_RANGE_DIFFERENCE
