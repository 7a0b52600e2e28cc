from __future__ import annotations

import json
import time
import urllib.request

from django.db import connection
from django.test.utils import CaptureQueriesContext

from prompts.selectors import prompt_render, prompt_resolve
from prompts.services import (
    experiment_start,
    prompt_label_move,
    prompt_template_create,
    prompt_version_create,
)
from tenants.models import Scope


def test_steady_state_resolve_and_render_costs_no_query(support_prompt, tenant):
    prompt_resolve(tenant=tenant, name="support")
    prompt_resolve(tenant=tenant, name="support", version=1)
    with CaptureQueriesContext(connection) as queries:
        for _ in range(50):
            resolved = prompt_resolve(tenant=tenant, name="support", user="u")
            prompt_render(resolved=resolved, variables={"company": "Acme", "question": "hi"})
            prompt_resolve(tenant=tenant, name="support", version=1)
    assert queries.captured_queries == []


def test_label_move_takes_effect_at_once_in_this_process(support_prompt, tenant):
    assert prompt_resolve(tenant=tenant, name="support").version.number == 1
    v2 = prompt_version_create(
        template=support_prompt, actor="t", messages=[{"role": "user", "content": "v2"}]
    )
    assert prompt_resolve(tenant=tenant, name="support").version.number == 1
    prompt_label_move(template=support_prompt, label="production", version=v2, actor="t")
    assert prompt_resolve(tenant=tenant, name="support").version.number == 2


def test_experiment_start_takes_effect_at_once(support_prompt, tenant):
    prompt_resolve(tenant=tenant, name="support")
    prompt_version_create(template=support_prompt, actor="t", messages=[{"role": "user", "content": "v2"}])
    experiment_start(template=support_prompt, variants=[(1, 0), (2, 100)], actor="t")
    assert prompt_resolve(tenant=tenant, name="support", user="u").version.number == 2


def test_label_move_reaches_every_gunicorn_worker(gunicorn_server, tenant, make_key):
    """Another process moves the label; every worker serves the new version within a few seconds."""
    template = prompt_template_create(tenant=tenant, name="hello", kind="text", text="one", actor="t")
    _, raw_key = make_key(tenant, scopes=[Scope.CHAT])

    def render() -> str:
        request = urllib.request.Request(
            f"{gunicorn_server.url}/api/v1/prompts/hello/render",
            data=b"{}",
            headers={"Authorization": f"Bearer {raw_key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)["text"]

    assert {render() for _ in range(12)} == {"one"}  # every worker has cached v1
    v2 = prompt_version_create(template=template, actor="t", text="two")
    prompt_label_move(template=template, label="production", version=v2, actor="t")
    deadline = time.monotonic() + 30  # a liveness bound, far above PROMPT_CACHE_CHECK_SECONDS
    while {render() for _ in range(12)} != {"two"}:
        assert time.monotonic() < deadline, "workers kept serving the old version"
        time.sleep(0.5)
