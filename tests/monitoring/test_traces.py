"""Trace writing: one statement for a batch of traces and their spans, values made fit for jsonb, and
a failed write that never fails (or poisons) the request's other work, nor the rest of its batch."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from monitoring.models import Span, Trace
from monitoring.services import TraceRecorder, trace_queue, traces_write
from tenants.background import background
from tenants.models import Tenant


def test_trace_and_spans_are_written_with_what_jsonb_takes(tenant):
    recorder = TraceRecorder(tenant=tenant, request_id="r1", endpoint="test")
    with recorder.span("retrieval", k=3) as span:
        span.update(score=float("nan"), best=np.float32(0.5), ids={7}, note="a\x00b", top=np.int64(2))
    recorder.add_span("settle", start_ms=1.0, duration_ms=0.5, charged=True)
    recorder.finish(error="bad\x00byte")
    trace = Trace.objects.get(request_id="r1")
    assert trace.error == "badbyte"
    spans = list(Span.objects.filter(trace=trace).order_by("ordinal"))
    assert [s.name for s in spans] == ["retrieval", "settle"]
    assert spans[0].attributes == {"k": 3, "score": None, "best": 0.5, "ids": [7], "note": "ab", "top": 2}
    assert spans[1].attributes == {"charged": True}


def test_a_failed_trace_write_is_logged_and_leaves_the_transaction_usable(tenant, caplog):
    # pytest-django runs this test inside a transaction, as a caller inside `atomic` would.
    recorder = TraceRecorder(tenant=tenant, request_id="x" * 101, endpoint="test")  # too long a column
    with caplog.at_level(logging.ERROR, logger="monitoring.services"):
        recorder.finish()
    assert f"writing trace {recorder.id} failed" in caplog.text
    assert not Trace.objects.filter(pk=recorder.id).exists()
    assert Tenant.objects.filter(pk=tenant.pk).exists()  # the transaction still works


@pytest.fixture
def finished_row(monkeypatch):
    """Finishes a trace and returns what it handed to the queue (captured instead of queued)."""

    def finish(tenant, request_id: str, *span_names: str) -> tuple[dict, list[dict]]:
        captured: list[tuple[dict, list[dict]]] = []
        recorder = TraceRecorder(tenant=tenant, request_id=request_id, endpoint="test")
        for name in span_names:
            with recorder.span(name):
                pass
        with monkeypatch.context() as patched:
            patched.setattr(trace_queue, "put", lambda row, spans: captured.append((row, spans)))
            recorder.finish()
        return captured[0]

    return finish


def test_a_batch_is_one_statement_and_a_bad_trace_loses_only_itself(tenant, caplog, finished_row):
    good = [finished_row(tenant, f"good-{n}", "reserve", "provider") for n in range(3)]
    with CaptureQueriesContext(connection) as queries:
        traces_write(good)
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 1
    assert "INSERT INTO monitoring_trace" in statements[0]
    assert Span.objects.filter(trace__request_id__startswith="good-").count() == 6
    bad = finished_row(tenant, "x" * 101)  # too long for its column
    batch = [finished_row(tenant, "first", "settle"), bad, finished_row(tenant, "last")]
    with caplog.at_level(logging.ERROR, logger="monitoring.services"):
        traces_write(batch)
    assert set(
        Trace.objects.filter(request_id__in=["first", "last"]).values_list("request_id", flat=True)
    ) == {
        "first",
        "last",
    }
    assert f"writing trace {bad[0]['id']} failed" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_traces_are_written_by_the_background_thread(tenant, settings):
    settings.BACKGROUND_INLINE = False
    release = threading.Event()
    background.submit(lambda: release.wait(10))  # hold the thread: the traces below wait in the queue
    recorders = [TraceRecorder(tenant=tenant, request_id=f"queued-{n}", endpoint="test") for n in range(20)]
    for recorder in recorders:
        with recorder.span("provider"):
            pass
        recorder.finish()
    assert not Trace.objects.filter(request_id__startswith="queued-").exists()  # none in the request thread
    release.set()
    assert background.flush(timeout=10)
    assert Trace.objects.filter(request_id__startswith="queued-").count() == 20
    assert Span.objects.filter(trace__request_id__startswith="queued-", name="provider").count() == 20
