"""Every Prometheus metric of the service, in one place (the README's metrics table lists them).

Multiprocess: under gunicorn (several workers) and Celery, PROMETHEUS_MULTIPROC_DIR is set and each
process writes its counters and histograms to its own files there; /metrics sums them. Nothing here is
a gauge a process sets: a value one process saw would be wrong for the others. What is state rather
than a count (the circuit breakers, held in Redis) is read when /metrics is scraped, by a collector
registered in SCRAPE_TIME (chat registers its own: monitoring never imports chat).

Cardinality: labels take values from bounded sets (endpoints, configured provider:models, fixed
reasons). A `tenant` label (the slug) is added to requests, tokens, cost and refusals only when
METRICS_TENANT_LABEL is on: read once, at import, as the label names of a metric cannot change.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from django.conf import settings
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

if TYPE_CHECKING:
    from tenants.models import Tenant

TENANT_LABEL: bool = settings.METRICS_TENANT_LABEL
_TENANT = ["tenant"] if TENANT_LABEL else []

REQUESTS = Counter(
    "llm_requests_total",
    "Chat requests, by how they ended",
    ["endpoint", "provider", "model", "status", *_TENANT],
)
TOKENS = Counter(
    "llm_tokens_total",
    "Tokens charged (input, cached_input, output)",
    ["provider", "model", "kind", *_TENANT],
)
COST = Counter("llm_cost_usd_total", "Cost charged, USD (the ledger's sum)", ["provider", "model", *_TENANT])
LATENCY = Histogram(
    "llm_request_seconds",
    "Chat request latency, to the end of the answer",
    ["endpoint", "provider", "model"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
TTFT = Histogram(
    "llm_time_to_first_token_seconds",
    "Time to first streamed token",
    ["provider"],
    buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)
ATTEMPTS = Counter("llm_provider_attempts_total", "Provider attempts", ["provider", "model", "outcome"])
FALLBACKS = Counter(
    "llm_fallbacks_total",
    "The chain left a provider:model for the next one, and why",
    ["from", "to", "reason"],
)
CACHE_HITS = Counter("llm_cache_hits_total", "Answers served from a cache", ["kind"])
CACHE_MISSES = Counter("llm_cache_misses_total", "Cache lookups that found no answer", ["kind"])
REFUSALS = Counter("llm_refusals_total", "Requests refused before or instead of a call", ["reason", *_TENANT])
FEEDBACK = Counter("llm_feedback_total", "Feedback scores written (new or changed)", ["name", "score"])
TRACES_DROPPED = Counter("llm_traces_dropped_total", "Traces dropped: too many were waiting to be written")
TRACES_LOST = Counter("llm_traces_lost_total", "Traces whose write failed")

REFUSAL_REASONS = {
    "budget_exceeded": "budget",
    "requests_per_minute_exceeded": "rate_limit_requests",
    "tokens_per_minute_exceeded": "rate_limit_tokens",
    "request_over_tokens_per_minute": "rate_limit_tokens",
    "monthly_token_quota_exceeded": "monthly_quota",
    "input_too_large": "guard",
    "prompt_injection_detected": "guard",
    "model_not_allowed": "model_not_allowed",
}


def refusal_reason(code: str) -> str:
    """The `reason` label of a refusal from its API error code; `other` for any code not listed."""
    return REFUSAL_REASONS.get(code, "other")


def _tenant_labels(tenant: Tenant) -> dict[str, str]:
    return {"tenant": tenant.slug} if TENANT_LABEL else {}


def refusal_count(*, tenant: Tenant, code: str) -> None:
    REFUSALS.labels(reason=refusal_reason(code), **_tenant_labels(tenant)).inc()


def request_observe(*, tenant: Tenant, endpoint: str, row: dict[str, Any]) -> None:
    """Counts a finished request (a trace row: status, provider, model, tokens, cost, timings)."""
    labels = {"provider": row["provider"] or "-", "model": row["model"] or "-"}
    tenant_labels = _tenant_labels(tenant)
    REQUESTS.labels(endpoint=endpoint, status=row["status"], **labels, **tenant_labels).inc()
    LATENCY.labels(endpoint=endpoint, **labels).observe(row["latency_ms"] / 1000)
    if row["time_to_first_token_ms"] is not None:
        TTFT.labels(provider=labels["provider"]).observe(row["time_to_first_token_ms"] / 1000)
    for kind in ("input_tokens", "cached_input_tokens", "output_tokens"):
        if row[kind]:
            TOKENS.labels(kind=kind, **labels, **tenant_labels).inc(row[kind])
    if row["cost_nanos"]:
        COST.labels(**labels, **tenant_labels).inc(row["cost_nanos"] / 1e9)


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


# Collectors computed when /metrics is scraped, in the scraping process (state, not counts).
SCRAPE_TIME = CollectorRegistry(auto_describe=False)


class _Exposition:
    """This scrape's collectors: every process's counts (multiprocess) or this one's, then SCRAPE_TIME."""

    def __init__(self, *collectors: Collector) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def metrics_exposition() -> bytes:
    """The text /metrics serves."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counts: Collector = CollectorRegistry()
        MultiProcessCollector(counts)
    else:
        counts = REGISTRY
    return generate_latest(_Exposition(counts, SCRAPE_TIME))
