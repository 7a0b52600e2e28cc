"""Prometheus metrics under a real gunicorn with several workers in multiprocess mode (counts, tokens
and cost equal the ledger), promtool on the exposition, and the operator's files in ops/: alert
rules checked and unit-tested by promtool, a dashboard using only metrics that exist. What the chat
pipeline counts is tested in tests/chat/test_metrics.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from billing.models import ModelPrice, UsageEntry
from billing.pricing_data import seed_prices
from monitoring.metrics import REFUSAL_REASONS, refusal_reason
from tests.conftest import BASE_DIR, gunicorn_running
from tests.fake_llm import FakeLLMServer

OPS = BASE_DIR / "ops"
OPENAI = "openai:gpt-4o-mini"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not installed: `apt-get install prometheus` (Debian) provides it; "
            ".ci/run installs it in CI. These checks must not be skipped."
        )
    return path


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_refusal_reason_maps_every_code_and_the_rest_to_other():
    assert refusal_reason("budget_exceeded") == "budget"
    assert refusal_reason("request_over_tokens_per_minute") == "rate_limit_tokens"
    assert refusal_reason("prompt_injection_detected") == "guard"
    assert refusal_reason("model_not_found") == "other"
    assert set(REFUSAL_REASONS.values()) == {
        "budget",
        "rate_limit_requests",
        "rate_limit_tokens",
        "monthly_quota",
        "guard",
        "model_not_allowed",
    }


# --- several gunicorn workers, multiprocess mode --------------------------------------------------------


def post_chat(url: str, raw_key: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        f"{url}/api/v1/chat",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def wait_for_workers(url: str, metrics_dir: Path, *, count: int) -> None:
    """Until `count` workers have served a request (each writes its own counter file): the fixture
    waits for one, and on a loaded machine the others boot seconds later, so a burst sent at once
    could all go to the first."""
    deadline = time.monotonic() + 120
    while len(list(metrics_dir.glob("counter_*.db"))) < count:
        assert time.monotonic() < deadline, f"fewer than {count} gunicorn workers came up"
        with urllib.request.urlopen(f"{url}/health/live", timeout=10) as response:
            response.read()
        time.sleep(0.05)


def requests_per_process(metrics_dir: Path) -> list[float]:
    """llm_requests_total as each process's own file holds it (each read alone)."""
    counts = []
    for path in metrics_dir.glob("counter_*.db"):
        alone = metrics_dir.parent / f"alone-{path.stem}"
        alone.mkdir()
        shutil.copy(path, alone)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        counts.append(sum(s.value for m in registry.collect() if m.name == "llm_requests" for s in m.samples))
    return [count for count in counts if count]


@pytest.mark.parametrize("tenant_label", [False, True])
def test_several_workers_sum_to_the_ledger(transactional_db, tenant, make_key, tmp_path, tenant_label):
    seed_prices(ModelPrice)  # a transactional test starts with empty tables
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    upstream = FakeLLMServer("openai")
    _, raw_key = make_key(tenant, scopes=["chat"])
    requests = 16
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "METRICS_TENANT_LABEL": "1" if tenant_label else "0",
        "OPENAI_BASE_URL": upstream.base_url,
        "OPENAI_API_KEY": "test-openai-key",
        "CHAT_DEFAULT_FALLBACK_CHAIN": OPENAI,
    }
    try:
        with gunicorn_running(**env) as server, ThreadPoolExecutor(8) as pool:
            wait_for_workers(server.url, metrics_dir, count=2)
            bodies = [{"message": f"Question {n}?", "max_tokens": 20} for n in range(requests)]
            statuses = list(pool.map(lambda body: post_chat(server.url, raw_key, body), bodies))
            assert statuses == [200] * requests
            assert post_chat(server.url, raw_key, {"message": "x" * 40_000}) == 400  # a guard refusal
            with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
                text = response.read().decode()
    finally:
        upstream.close()
    found = samples(text)
    tenant_labels = {"tenant": "acme"} if tenant_label else {}

    def sample(name: str, **labels: str) -> float:
        return found.get((name, frozenset(labels.items())), 0.0)

    openai = {"provider": "openai", "model": "gpt-4o-mini"}
    ok = {"endpoint": "chat", "status": "ok", **openai, **tenant_labels}
    assert sample("llm_requests_total", **ok) == requests
    assert len(requests_per_process(metrics_dir)) >= 2  # the requests were spread over workers
    entries = UsageEntry.objects.filter(tenant=tenant)
    assert entries.count() == requests
    ledger_usd = sum(entry.cost_nanos for entry in entries) / 1e9
    assert ledger_usd > 0
    assert sample("llm_cost_usd_total", **openai, **tenant_labels) == pytest.approx(ledger_usd, rel=1e-9)
    for kind in ("input_tokens", "cached_input_tokens", "output_tokens"):
        ledger_tokens = sum(getattr(entry, kind) for entry in entries)
        assert sample("llm_tokens_total", kind=kind, **openai, **tenant_labels) == ledger_tokens
    assert sample("llm_request_seconds_count", endpoint="chat", **openai) == requests
    assert sample("llm_refusals_total", reason="guard", **tenant_labels) == 1
    assert sample("llm_circuit_state", **openai) == 0
    assert any("tenant" in dict(labels) for _, labels in found) is tenant_label
    (tmp_path / "scrape.txt").write_text(text)
    check = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


# --- the operator's files in ops/ ----------------------------------------------------------------------


def test_alert_rules_pass_promtool():
    check = subprocess.run(
        [promtool(), "check", "rules", str(OPS / "prometheus-alerts.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout


def test_alert_rules_fire_as_their_unit_tests_say():
    check = subprocess.run(
        [promtool(), "test", "rules", "prometheus-alerts.test.yml"],
        cwd=OPS,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


# Defined by the feedback service, beside these: the dashboard and alerts use it too.
ELSEWHERE = {"llm_feedback_total"}


def test_the_dashboard_and_alerts_use_only_metrics_that_exist():
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs
    used = set(re.findall(r"\bllm_[a-z_]+", " ".join(exprs) + (OPS / "prometheus-alerts.yml").read_text()))
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    defined = {metric.name for metric in REGISTRY.collect()} | {"llm_circuit_state"}
    defined |= {f"{name}_total" for name in defined}
    assert used - defined - ELSEWHERE == set()
