"""The fallback chain: try each provider:model in order, with bounded retries, backoff and jitter
for retryable failures, skipping open circuits. Each attempt is a span in the trace.

Budget: a target is reserved for (worst case at *its* price) before its first attempt and released
if all its attempts fail, so a fallback to a dearer model is never under-reserved.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Generic, TypeVar

from django.conf import settings

from billing.services import BudgetExceeded, ModelNotPriced, ReservationHandle, budget_release
from chat.circuit import circuit_allows, circuit_record_failure, circuit_record_success
from chat.providers import Completion, Finish, ProviderError, ProviderRequest, Usage, provider_named
from monitoring.metrics import ATTEMPTS, FALLBACKS
from monitoring.services import TraceRecorder
from tenants.errors import ApiError

T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    provider: str
    model: str

    @property
    def key(self) -> str:
        return f"{self.provider}:{self.model}"

    @classmethod
    def parse(cls, entry: str) -> Target:
        provider, _, model = entry.partition(":")
        return cls(provider.strip(), model.strip())


@dataclass
class Served(Generic[T]):
    target: Target
    reservation: ReservationHandle
    result: T
    attempts: int


class UpstreamUnavailable(ApiError):
    def __init__(self, failures: list[str]) -> None:
        super().__init__(
            "No provider could serve the request: " + "; ".join(failures or ["no provider available"]),
            status_code=502,
            code="upstream_unavailable",
        )


class UpstreamRejected(ApiError):
    def __init__(self, error: ProviderError) -> None:
        super().__init__(str(error), status_code=400, code="provider_rejected_request")


def backoff_seconds(attempt: int, error: ProviderError) -> float | None:
    """How long to wait before retry `attempt` (1-based), or None to stop retrying this target."""
    if error.retry_after is not None:
        return error.retry_after if error.retry_after <= settings.CHAT_RETRY_MAX_DELAY_SECONDS else None
    delay = min(
        settings.CHAT_RETRY_MAX_DELAY_SECONDS, settings.CHAT_RETRY_BASE_DELAY_SECONDS * 2 ** (attempt - 1)
    )
    return delay * random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret


def run_chain(
    *,
    targets: list[Target],
    request_for: Callable[[Target], ProviderRequest],
    reserve: Callable[[Target, ProviderRequest], ReservationHandle],
    call: Callable[[Target, ProviderRequest], T],
    recorder: TraceRecorder,
) -> Served[T]:
    """Runs `call` down the chain until one target succeeds; raises UpstreamUnavailable if none does.
    Each step to the next target counts in llm_fallbacks_total: from the one left, to the next in the
    chain (tried, or itself skipped: another step), reason the error kind, circuit_open or
    model_not_priced."""
    failures: list[str] = []
    attempts = 0
    left_because = ""  # why the chain left the previous target: the fallback's reason
    for position, target in enumerate(targets):
        if position:
            FALLBACKS.labels(targets[position - 1].key, target.key, left_because).inc()
        if not circuit_allows(target.key):
            left_because = "circuit_open"
            recorder.add_span(
                "provider",
                start_ms=recorder.elapsed_ms(),
                duration_ms=0,
                status="skipped",
                provider=target.provider,
                model=target.model,
                reason="circuit open",
            )
            failures.append(f"{target.key}: circuit open")
            continue
        request = request_for(target)
        try:
            reservation = reserve(target, request)
        except ModelNotPriced as exc:
            if position == 0 and len(targets) == 1:
                raise
            left_because = "model_not_priced"
            failures.append(f"{target.key}: {exc.message}")
            continue
        except (BudgetExceeded, ApiError) as refusal:  # the budget, or the monthly token quota
            if not failures:
                raise  # nothing failed before: the budget is why nothing is called
            # A fallback whose worst case no longer fits: the earlier targets' failure is the answer
            # (retryable), not an exhausted budget that tells OpenAI clients never to retry.
            left_because = "budget"
            failures.append(f"{target.key}: {refusal}")
            continue
        for retry in range(settings.CHAT_MAX_RETRIES + 1):
            attempts += 1
            with recorder.span(
                "provider", provider=target.provider, model=target.model, attempt=retry + 1
            ) as span:
                try:
                    result = call(target, request)
                except ProviderError as error:
                    span.update(
                        status="error",
                        error_kind=error.kind,
                        error=str(error)[:300],
                        http_status=error.status_code,
                    )
                    ATTEMPTS.labels(provider=target.provider, model=target.model, outcome=error.kind).inc()
                    outcome: ProviderError | None = error
                else:
                    ATTEMPTS.labels(provider=target.provider, model=target.model, outcome="ok").inc()
                    outcome = None
            if outcome is None:
                circuit_record_success(target.key)
                return Served(target, reservation, result, attempts)
            if outcome.counts_against_circuit:
                circuit_record_failure(target.key)
            if outcome.kind == "bad_request":
                budget_release(handle=reservation)
                raise UpstreamRejected(outcome)
            delay = backoff_seconds(retry + 1, outcome) if outcome.retryable else None
            if delay is None or retry == settings.CHAT_MAX_RETRIES:
                left_because = outcome.kind
                failures.append(f"{target.key}: {outcome}")
                break
            time.sleep(delay)
        budget_release(handle=reservation)
    raise UpstreamUnavailable(failures)


def complete_call(target: Target, request: ProviderRequest) -> Completion:
    return provider_named(target.provider).complete(request)


@dataclass
class OpenStream:
    """A stream whose first event has arrived: from here on the chain is committed to this target."""

    first: str | Usage | Finish
    rest: Iterator[str | Usage | Finish]
    opened_at_ms: float

    def events(self) -> Iterator[str | Usage | Finish]:
        return chain([self.first], self.rest)


def stream_call_factory(recorder: TraceRecorder) -> Callable[[Target, ProviderRequest], OpenStream]:
    def open_stream(target: Target, request: ProviderRequest) -> OpenStream:
        """Opens the stream and waits for its first event; failing before it lets the chain fall back."""
        iterator = iter(provider_named(target.provider).stream(request))
        try:
            first = next(iterator)
        except StopIteration:
            raise ProviderError("malformed", "the stream ended before any event") from None
        return OpenStream(first, iterator, recorder.elapsed_ms())

    return open_stream
