from __future__ import annotations

import hashlib
import hmac
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.core import mail
from django.core.mail.backends.base import BaseEmailBackend
from django.db import connections

from billing.models import BudgetAlert
from billing.services import (
    AlertDeliveryError,
    budget_alert_deliver,
    budget_reserve,
    budget_settle,
    budget_update,
    webhook_signature,
)
from billing.tasks import deliver_budget_alert
from config.celery import app as celery_app


class WebhookReceiver:
    """A real HTTP server on 127.0.0.1 that fails the first `failures` deliveries with 500."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = 500 if len(receiver.requests) <= receiver.failures else 204
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/budget"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def eager_celery():
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


def spend(tenant, request_id: str, output_tokens: int) -> None:
    handle = budget_reserve(
        tenant=tenant,
        request_id=request_id,
        provider="openai",
        model="gpt-4o",
        prompt_tokens=0,
        max_tokens=output_tokens,
    )
    budget_settle(handle=handle, input_tokens=0, cached_input_tokens=0, output_tokens=output_tokens)


def test_crossing_thresholds_alerts_once_each_by_email_and_signed_webhook(
    tenant, eager_celery, django_capture_on_commit_callbacks
):
    receiver = WebhookReceiver()
    try:
        budget = budget_update(
            tenant=tenant,
            actor="t",
            monthly_budget_usd=Decimal("1.00"),
            alert_emails=["ops@acme.test"],
            webhook_url=receiver.url,
        )
        with django_capture_on_commit_callbacks(execute=True):
            spend(tenant, "a", 40_000)  # $0.40
            spend(tenant, "b", 20_000)  # $0.60: crosses 50 %
            spend(tenant, "c", 30_000)  # $0.90: crosses 80 %
            spend(tenant, "d", 1_000)  # no new threshold
    finally:
        receiver.close()
    assert list(
        BudgetAlert.objects.order_by("threshold_percent").values_list("threshold_percent", flat=True)
    ) == [50, 80]
    assert len(mail.outbox) == 2
    assert "50%" in mail.outbox[0].subject
    assert len(receiver.requests) == 2
    headers, body = receiver.requests[0]
    timestamp, signature = (part.split("=", 1)[1] for part in headers["X-Webhook-Signature"].split(","))
    expected = hmac.new(
        budget.webhook_secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(signature, expected)
    assert json.loads(body)["threshold_percent"] == 50
    assert BudgetAlert.objects.filter(webhook_sent_at__isnull=False, email_sent_at__isnull=False).count() == 2


def test_webhook_is_retried_until_delivered_without_duplicate_email(tenant, eager_celery):
    receiver = WebhookReceiver(failures=2)
    try:
        budget_update(
            tenant=tenant,
            actor="t",
            monthly_budget_usd=Decimal("1.00"),
            alert_emails=["ops@acme.test"],
            webhook_url=receiver.url,
        )
        alert = BudgetAlert.objects.create(
            tenant=tenant,
            month="2026-01-01",
            threshold_percent=80,
            spent_nanos=800_000_000,
            budget_nanos=10**9,
        )
        deliver_budget_alert.apply(args=[alert.pk])
    finally:
        receiver.close()
    alert.refresh_from_db()
    assert len(receiver.requests) == 3
    assert alert.webhook_attempts == 3
    assert alert.webhook_sent_at is not None
    assert len(mail.outbox) == 1
    assert len({headers["Idempotency-Key"] for headers, _ in receiver.requests}) == 1


def test_signature_helper_matches_the_documented_scheme():
    body = b'{"a":1}'
    digest = hmac.new(b"secret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert webhook_signature(secret="secret", timestamp=1700000000, body=body) == f"t=1700000000,v1={digest}"


@pytest.mark.django_db(transaction=True)
def test_concurrent_crossings_send_one_alert_per_threshold(tenant):
    budget_update(tenant=tenant, actor="t", monthly_budget_usd=Decimal("1.00"))
    spend(tenant, "warmup", 49_000)  # $0.49
    barrier = threading.Barrier(16)

    def cross(index: int) -> None:
        try:
            barrier.wait()
            spend(tenant, f"r{index}", 2_000)  # each $0.02: several cross 50 % "together"
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(cross, range(16)))
    # $0.49 + 16 * $0.02 = $0.81: 50 % and 80 % crossed, each alerted exactly once.
    assert sorted(BudgetAlert.objects.values_list("threshold_percent", flat=True)) == [50, 80]


class BrokenEmailBackend(BaseEmailBackend):
    def send_messages(self, email_messages):
        raise OSError("SMTP server unreachable")


def test_an_email_failure_neither_blocks_the_webhook_nor_is_forgotten(tenant, settings):
    receiver = WebhookReceiver()
    try:
        budget_update(
            tenant=tenant,
            actor="t",
            monthly_budget_usd=Decimal("1.00"),
            alert_emails=["ops@acme.test"],
            webhook_url=receiver.url,
        )
        alert = BudgetAlert.objects.create(
            tenant=tenant,
            month="2026-01-01",
            threshold_percent=50,
            spent_nanos=500_000_000,
            budget_nanos=10**9,
        )
        settings.EMAIL_BACKEND = "tests.billing.test_alerts.BrokenEmailBackend"
        with pytest.raises(AlertDeliveryError, match="email"):
            budget_alert_deliver(alert_id=alert.pk)
        alert.refresh_from_db()
        assert alert.webhook_sent_at is not None
        assert alert.email_sent_at is None
        settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
        budget_alert_deliver(alert_id=alert.pk)  # the retry
    finally:
        receiver.close()
    alert.refresh_from_db()
    assert alert.email_sent_at is not None
    assert len(receiver.requests) == 1
    assert len(mail.outbox) == 1
