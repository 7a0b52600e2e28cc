"""Chat's metrics read when /metrics is scraped: the circuit breakers' states, held in Redis.

Read at scrape time, not set by the process that saw a change: with several gunicorn workers and
Celery, a gauge one process set would be stale or missing in the others' files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from chat.fallback import Target
from chat.selectors import known_circuits
from tenants.errors import DATABASE_UNAVAILABLE_ERRORS

logger = logging.getLogger(__name__)

CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


class CircuitStateCollector:
    """llm_circuit_state{provider,model}: 0 closed, 1 half-open, 2 open. A circuit whose state Redis
    cannot tell has no sample (absent, not a guess)."""

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        try:
            circuits = known_circuits()
        except DATABASE_UNAVAILABLE_ERRORS:  # the chains are in the database: no states this scrape
            logger.warning("circuit states unavailable for /metrics: database unreachable")
            circuits = []
        for circuit in circuits:
            if circuit.state in CIRCUIT_STATES:
                target = Target.parse(circuit.target)
                family.add_metric([target.provider, target.model], CIRCUIT_STATES[circuit.state])
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "llm_circuit_state",
            "Circuit breaker per provider:model: 0 closed, 1 half-open, 2 open",
            labels=["provider", "model"],
        )
