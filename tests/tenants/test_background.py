"""The after-response thread (tenants/background.py): jobs run off the caller's thread, in order; a
failing job is logged and the next still runs; a full queue drops and counts; flush waits for all."""

from __future__ import annotations

import logging
import threading

import pytest
from prometheus_client import REGISTRY

from tenants.background import BackgroundRunner


@pytest.fixture
def runner(settings) -> BackgroundRunner:
    settings.BACKGROUND_INLINE = False
    return BackgroundRunner()


def dropped_so_far() -> float:
    return REGISTRY.get_sample_value("llm_background_jobs_dropped_total") or 0.0


def test_jobs_run_in_order_on_another_thread(runner):
    seen: list[tuple[int, str]] = []
    for number in range(50):
        runner.submit(lambda number=number: seen.append((number, threading.current_thread().name)))
    assert runner.flush(timeout=10)
    assert [number for number, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"background-jobs"}


def test_a_failing_job_is_logged_and_the_next_one_still_runs(runner, caplog):
    done = threading.Event()

    def fail() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="tenants.background"):
        runner.submit(fail)
        runner.submit(done.set)
        assert runner.flush(timeout=10)
    assert done.is_set()
    assert "background job" in caplog.text
    assert "RuntimeError: boom" in caplog.text


def test_a_full_queue_drops_new_jobs_and_counts_them(runner, settings):
    settings.BACKGROUND_QUEUE_SIZE = 2
    release = threading.Event()
    ran: list[int] = []
    runner.submit(lambda: release.wait(10))  # occupies the thread
    before = dropped_so_far()
    for number in range(10):
        runner.submit(lambda number=number: ran.append(number))
    assert dropped_so_far() - before >= 7  # at most 2 waited (plus one if the thread took it)
    release.set()
    assert runner.flush(timeout=10)
    assert 1 <= len(ran) <= 3


def test_flush_gives_up_after_its_timeout(runner):
    release = threading.Event()
    runner.submit(lambda: release.wait(10))
    assert runner.flush(timeout=0.2) is False
    release.set()
    assert runner.flush(timeout=10)


def test_inline_mode_runs_the_job_at_once_in_the_caller(settings):
    settings.BACKGROUND_INLINE = True
    runner = BackgroundRunner()
    names: list[str] = []
    runner.submit(lambda: names.append(threading.current_thread().name))
    assert names == [threading.current_thread().name]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread it ends
def test_a_dead_thread_is_replaced_and_a_forked_child_starts_afresh(runner):
    runner.submit(lambda: None)
    assert runner.flush(timeout=10)
    first = runner._thread
    assert first is not None
    runner.submit(lambda: (_ for _ in ()).throw(SystemExit))  # ends the thread, as a BaseException would
    first.join(timeout=10)
    assert not first.is_alive()
    done = threading.Event()
    assert runner.submit(done.set)
    assert done.wait(10)  # a new thread took the job
    runner.forget_after_fork()  # what os.register_at_fork runs in a child
    assert runner._queue is None
    again = threading.Event()
    assert runner.submit(again.set)
    assert again.wait(10)


def test_log_lines_name_the_job_not_its_arguments(runner, settings, caplog):
    from functools import partial

    settings.BACKGROUND_QUEUE_SIZE = 1
    release = threading.Event()
    runner.submit(release.wait)
    runner.submit(lambda: None)
    with caplog.at_level(logging.ERROR, logger="tenants.background"):
        for _ in range(3):
            runner.submit(partial(str, "a tenant's answer"))
    release.set()
    assert "dropping str" in caplog.text
    assert "a tenant's answer" not in caplog.text
