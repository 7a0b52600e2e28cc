"""Trace writing: one statement for the trace and its spans, values made fit for jsonb, and a failed
write that never fails (or poisons) the request's other work."""

from __future__ import annotations

import logging

import numpy as np

from monitoring.models import Span, Trace
from monitoring.services import TraceRecorder
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
