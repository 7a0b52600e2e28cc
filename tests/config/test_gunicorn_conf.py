"""config/gunicorn.conf.py: the worker count follows the cores the process may really use."""

from __future__ import annotations

import importlib.util
import os

import pytest

from tests.conftest import BASE_DIR


def gunicorn_conf():
    spec = importlib.util.spec_from_file_location("gunicorn_conf", BASE_DIR / "config" / "gunicorn.conf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", None),  # no quota: every core of the affinity mask
        ("150000 100000\n", 2),  # 1.5 cores of quota: two processes
        ("50000 100000\n", 1),
        (None, None),  # no cgroup v2 file (not in a container, or cgroup v1)
    ],
)
def test_workers_default_to_the_usable_cores(tmp_path, cpu_max, expected):
    cores = len(os.sched_getaffinity(0))
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    assert gunicorn_conf().usable_cores(path) == min(cores, expected or cores)


def test_master_starts_with_an_empty_metrics_directory(tmp_path, monkeypatch):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "counter_4242.db").write_bytes(b"a previous run's worker")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    gunicorn_conf().on_starting(server=None)
    assert metrics_dir.is_dir()
    assert list(metrics_dir.iterdir()) == []


def test_an_empty_worker_count_means_the_usable_cores(monkeypatch):
    """compose.yaml passes WEB_CONCURRENCY through as an empty string when the operator set none."""
    monkeypatch.setenv("WEB_CONCURRENCY", "")
    monkeypatch.setenv("GUNICORN_THREADS", "")
    conf = gunicorn_conf()
    assert conf.workers == conf.usable_cores()
    assert conf.threads == 8
