"""Bookkeeping that runs after the response: one daemon thread per process runs submitted jobs in order.

A chat request's trace, its tokens-per-minute correction and its exact-cache entry need not hold the
client up: the request thread queues them here and answers (bench/bench_gateway.py measures the
difference). The thread runs what gathered in BACKGROUND_BATCH_SECONDS at a time, so these land up
to that much later (a token count stays over-estimated meanwhile, never under). Only best-effort
work belongs here. A process killed hard (SIGKILL, OOM) loses what is
still queued, usually a few milliseconds of jobs; a normal exit (gunicorn's worker_exit, atexit)
runs the queue dry first, for up to BACKGROUND_FLUSH_SECONDS. Money never goes through here: the
ledger is written before the response, and durable work goes to Celery.

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

DROPPED = Counter("llm_background_jobs_dropped_total", "Background jobs dropped because the queue was full")

Job = Callable[[], None]


class BackgroundRunner:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job] | None = None
        self._pid: int | None = None

    def _started_queue(self) -> queue.Queue[Job]:
        """This process's queue, with its thread started on first use (and again after a fork)."""
        jobs, pid = self._queue, os.getpid()
        if jobs is not None and self._pid == pid:
            return jobs
        with self._lock:
            if self._queue is None or self._pid != pid:
                self._queue = queue.Queue(maxsize=settings.BACKGROUND_QUEUE_SIZE)
                self._pid = pid
                threading.Thread(
                    target=self._run, args=(self._queue,), name="background-jobs", daemon=True
                ).start()
            return self._queue

    def submit(self, job: Job) -> bool:
        """Queues the job (runs it, inline); False when the queue was full and the job was dropped."""
        if settings.BACKGROUND_INLINE:
            run_job(job)
            return True
        try:
            self._started_queue().put_nowait(job)
        except queue.Full:
            DROPPED.inc()
            logger.error("background queue full (%s jobs): dropping %s", settings.BACKGROUND_QUEUE_SIZE, job)
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
        if jobs is None or self._pid != os.getpid():
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
        logger.exception("background job %s failed", job)
    finally:
        if around is not None:
            try:
                around()
            except Exception:
                logger.exception("closing the background thread's connections failed")


background = BackgroundRunner()
atexit.register(background.flush)
