"""Traces past their tenant's retention go, with their spans and feedback, in bounded batches; recent
traces, other tenants' and the ledger stay."""

from __future__ import annotations

from datetime import timedelta

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import UsageEntry
from billing.services import usage_record
from monitoring.models import Feedback, Span, Trace
from monitoring.services import trace_retention_apply
from monitoring.tasks import trace_retention_task
from tests.monitoring.conftest import make_trace


def test_only_traces_older_than_the_retention_go_with_their_spans_and_feedback(tenant):
    now = timezone.now()
    tenant.trace_retention_days = 7
    tenant.save()
    old = [
        make_trace(tenant, created_at=now - timedelta(days=8, minutes=n), spans=("a", "b")) for n in range(5)
    ]
    kept = make_trace(tenant, created_at=now - timedelta(days=6), spans=("a",))
    for trace in (old[0], kept):
        Feedback.objects.create(tenant=tenant, trace=trace, score=1)
    usage_record(
        tenant=tenant,
        request_id=old[0].request_id,
        kind="completion",
        provider="local",
        model="local",
        input_tokens=1,
        cached_input_tokens=0,
        output_tokens=1,
        trace_id=old[0].id,
    )
    with CaptureQueriesContext(connection) as queries:
        deleted = trace_retention_apply(tenant=tenant, now=now, batch_size=2)
    assert deleted == 5
    deletes = [q["sql"] for q in queries.captured_queries if "DELETE FROM monitoring_trace" in q["sql"]]
    assert len(deletes) == 3  # 2 + 2 + 1: bounded batches
    assert "LIMIT 2" in deletes[0]
    assert list(Trace.objects.values_list("pk", flat=True)) == [kept.pk]
    assert list(Span.objects.values_list("trace_id", flat=True)) == [kept.pk]
    assert list(Feedback.objects.values_list("trace_id", flat=True)) == [kept.pk]
    assert UsageEntry.objects.get().trace_id == old[0].id  # the ledger is never touched


def test_the_task_applies_each_tenants_own_retention(tenant, other_tenant):
    now = timezone.now()
    other_tenant.trace_retention_days = 90
    other_tenant.save()
    make_trace(tenant, request_id="mine-old", created_at=now - timedelta(days=31))
    make_trace(tenant, request_id="mine-new", created_at=now - timedelta(days=29))
    make_trace(other_tenant, request_id="theirs-old", created_at=now - timedelta(days=31))
    make_trace(other_tenant, request_id="theirs-ancient", created_at=now - timedelta(days=91))
    assert trace_retention_task() == 2
    assert sorted(Trace.objects.values_list("request_id", flat=True)) == ["mine-new", "theirs-old"]
