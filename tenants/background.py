"""Bookkeeping that runs after the response: one daemon thread per process runs submitted jobs in order.

A chat request's trace and its exact-cache entry need not hold the client up: the request thread
queues them here and answers (bench/bench_gateway.py measures the difference). The thread runs what
gathered in BACKGROUND_BATCH_SECONDS at a time, so they land that much later. Only best-effort work
that nothing else waits for belongs here: not money (the ledger is written before the response),
not limits (the next request must see them), not durable work (Celery). A process killed hard
(SIGKILL, OOM) loses what is still queued, at least the last BACKGROUND_BATCH_SECONDS of jobs; a
normal exit (gunicorn's worker_exit, atexit) runs the queue dry first, for up to
BACKGROUND_FLUSH_SECONDS and within gunicorn's graceful timeout.

With BACKGROUND_INLINE on, jobs run at once in the caller's thread (the test suite's default, where
each test's database transaction is invisible to another thread's connection).
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Callable

from django.conf import settings
from django.db import close_old_connections
from prometheus_client import Counter

logger = logging.getLogger(__name__)

DROPPED = Counter("llm_background_jobs_dropped_total", "Background jobs dropped: queue full or no thread")

Job = Callable[[], None]


def job_name(job: Job) -> str:
    """What a log line may say of a job: its function's name, never its arguments (tenant data)."""
    function = getattr(job, "func", job)
    return str(getattr(function, "__qualname__", type(function).__name__))


class BackgroundRunner:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job] | None = None
        self._thread: threading.Thread | None = None

    def forget_after_fork(self) -> None:
        """A forked child has neither the parent's thread nor a use for its queue."""
        self._lock = threading.Lock()
        self._queue, self._thread = None, None

    def _started_queue(self) -> queue.Queue[Job]:
        """The queue, with a live thread on it: started on first use, again if it ever died."""
        jobs, thread = self._queue, self._thread
        if jobs is not None and thread is not None and thread.is_alive():
            return jobs
        with self._lock:
            if self._queue is None:
                self._queue = queue.Queue(maxsize=settings.BACKGROUND_QUEUE_SIZE)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, args=(self._queue,), name="background-jobs", daemon=True
                )
                self._thread.start()
            return self._queue

    def submit(self, job: Job) -> bool:
        """Queues the job (runs it, inline); False when it was dropped, which never fails the caller."""
        if settings.BACKGROUND_INLINE:
            run_job(job)
            return True
        try:
            self._started_queue().put_nowait(job)
        except queue.Full:
            DROPPED.inc()
            logger.error(
                "background queue full (%s jobs): dropping %s", settings.BACKGROUND_QUEUE_SIZE, job_name(job)
            )
            return False
        except RuntimeError:  # no thread could be started
            DROPPED.inc()
            logger.exception("no background thread: dropping %s", job_name(job))
            return False
        return True

    @staticmethod
    def _run(jobs: queue.Queue[Job]) -> None:
        while True:
            job: Job | None = jobs.get()
            # Woken by the first job, the thread lets the next requests' jobs gather before it runs
            # them all: one wake-up and one trace statement for the lot, instead of work interleaved
            # with every request (bench/bench_gateway.py measured the difference).
            time.sleep(settings.BACKGROUND_BATCH_SECONDS)
            while job is not None:
                try:
                    run_job(job, around=close_old_connections)
                finally:
                    jobs.task_done()
                try:
                    job = jobs.get_nowait()
                except queue.Empty:
                    job = None

    def flush(self, timeout: float | None = None) -> bool:
        """Waits until every job queued so far has run (at most `timeout` seconds); True if they have."""
        jobs = self._queue
        if jobs is None:
            return True
        deadline = time.monotonic() + (settings.BACKGROUND_FLUSH_SECONDS if timeout is None else timeout)
        with jobs.all_tasks_done:
            while jobs.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    logger.error("background queue not drained: %s jobs left", jobs.unfinished_tasks)
                    return False
                jobs.all_tasks_done.wait(remaining)
        return True


def run_job(job: Job, around: Job | None = None) -> None:
    """Runs one job; a failure is logged, never raised (the request it came from was answered).

    `around` runs before and after it: on the thread, Django's own close_old_connections, as at the
    start and end of a request, so a broken or expired database connection is dropped (and with
    CONN_MAX_AGE=0 none is kept between jobs)."""
    try:
        if around is not None:
            around()
        job()
    except Exception:
        logger.exception("background job %s failed", job_name(job))
    finally:
        if around is not None:
            try:
                around()
            except Exception:
                logger.exception("closing the background thread's connections failed")


background = BackgroundRunner()
atexit.register(background.flush)
os.register_at_fork(after_in_child=background.forget_after_fork)
