from __future__ import annotations

import pytest

from prompts.models import PromptTemplate, PromptVersion
from prompts.services import prompt_template_create
from tenants.models import AuditEvent, Scope
from tests.conftest import client_with_key

SUPPORT = {
    "name": "faq",
    "kind": "chat",
    "messages": [
        {"role": "system", "content": "Answer for {{ company }}."},
        {"role": "user", "content": "{{ question }}"},
    ],
    "variables": {"company": "Acme", "question": None},
    "model_config": {"model": "gpt-4o-mini", "temperature": 0},
}


@pytest.fixture
def chat_client(tenant, make_key):
    return client_with_key(make_key(tenant, scopes=[Scope.CHAT])[1])


def test_create_render_and_read_back(api_client, chat_client):
    created = api_client.post("/api/v1/prompts", SUPPORT, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["labels"] == {"production": 1}
    rendered = chat_client.post(
        "/api/v1/prompts/faq/render", {"variables": {"question": "Hours?"}}, format="json"
    )
    assert rendered.status_code == 200
    assert rendered.json() == {
        "prompt": "faq",
        "messages": [
            {"role": "system", "content": "Answer for Acme."},
            {"role": "user", "content": "Hours?"},
        ],
        "version": 1,
        "variant": None,
        "experiment": None,
        "model_config": {"model": "gpt-4o-mini", "temperature": 0},
    }
    listed = chat_client.get("/api/v1/prompts").json()["results"]
    assert [(p["name"], p["owner"], p["latest_version"]) for p in listed] == [("faq", "tenant", 1)]
    detail = chat_client.get("/api/v1/prompts/faq").json()
    assert detail["versions"][0]["number"] == 1
    assert detail["running_experiment"] is None


def test_versions_labels_and_experiments_via_api(api_client, chat_client):
    api_client.post("/api/v1/prompts", SUPPORT, format="json")
    v2 = api_client.post(
        "/api/v1/prompts/faq/versions",
        {"messages": [{"role": "user", "content": "Q: {{ question }}"}], "message": "shorter"},
        format="json",
    )
    assert v2.status_code == 201
    assert v2.json()["number"] == 2
    assert v2.json()["variables"] == {"question": None}
    moved = api_client.put("/api/v1/prompts/faq/labels/staging", {"version": 2}, format="json")
    assert moved.status_code == 200
    staged = chat_client.post(
        "/api/v1/prompts/faq/render", {"label": "staging", "variables": {"question": "x"}}, format="json"
    )
    assert staged.json()["messages"] == [{"role": "user", "content": "Q: x"}]
    started = api_client.post(
        "/api/v1/prompts/faq/experiments",
        {"variants": [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}]},
        format="json",
    )
    assert started.status_code == 201
    experiment_id = started.json()["id"]
    body = chat_client.post(
        "/api/v1/prompts/faq/render", {"user": "u-1", "variables": {"question": "x"}}, format="json"
    ).json()
    assert body["experiment"] == experiment_id
    assert body["variant"] in {v["id"] for v in started.json()["variants"]}
    stopped = api_client.post(f"/api/v1/prompts/faq/experiments/{experiment_id}/stop")
    assert stopped.json()["status"] == "stopped"
    again = chat_client.post(
        "/api/v1/prompts/faq/render", {"user": "u-1", "variables": {"question": "x"}}, format="json"
    ).json()
    assert (again["experiment"], again["version"]) == (None, 1)
    assert AuditEvent.objects.filter(action="prompt_label.move", actor__startswith="api_key:").count() == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"variables": {}}, "variables.question"),
        ({"variables": {"question": "x", "extra": "y"}}, "variables.extra"),
        ({"variables": {"question": {"a": 1}}}, "variables.question"),
        ({"label": "nope", "variables": {"question": "x"}}, "label"),
        ({"version": 7, "variables": {"question": "x"}}, "version"),
        ({"label": "production", "version": 1}, "version"),
        ({"variables": "question=x"}, "variables"),
    ],
)
def test_render_errors_are_clear_4xx(api_client, chat_client, body, param):
    api_client.post("/api/v1/prompts", SUPPORT, format="json")
    response = chat_client.post("/api/v1/prompts/faq/render", body, format="json")
    assert response.status_code in (400, 404)
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**SUPPORT, "name": "Bad Name!"}, "name"),
        ({**SUPPORT, "kind": "poem"}, "kind"),
        ({**SUPPORT, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({**SUPPORT, "messages": []}, "messages"),
        ({**SUPPORT, "messages": [{"role": "user", "content": "{{ a.b }}"}]}, "messages.0.content"),
        ({**SUPPORT, "variables": {"company": None}}, "variables"),
        ({**SUPPORT, "model_config": {"temperature": 9}}, "model_config.temperature"),
        ({"name": "t", "kind": "text"}, "text"),
    ],
)
def test_bad_prompt_input_is_400_and_creates_nothing(api_client, body, param):
    response = api_client.post("/api/v1/prompts", body, format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["error"]["param"] == param
    assert not PromptTemplate.objects.exists()
    assert not PromptVersion.objects.exists()


def test_bad_experiments_are_400(api_client):
    api_client.post("/api/v1/prompts", SUPPORT, format="json")
    for variants in (
        [{"version": 1, "weight": 60}],
        [{"version": 1, "weight": 50}, {"version": 3, "weight": 50}],
        [],
        [{"version": 1, "weight": 101}],
    ):
        response = api_client.post("/api/v1/prompts/faq/experiments", {"variants": variants}, format="json")
        assert response.status_code == 400, variants


def test_writes_need_admin_scope(tenant, chat_client):
    prompt_template_create(tenant=tenant, name="faq", kind="text", text="{{ q }}", actor="t")
    assert chat_client.post("/api/v1/prompts", SUPPORT, format="json").status_code == 403
    assert (
        chat_client.put("/api/v1/prompts/faq/labels/staging", {"version": 1}, format="json").status_code
        == 403
    )


def test_global_prompts_are_readable_but_not_writable_by_tenants(db, api_client):
    prompt_template_create(tenant=None, name="house-style", kind="text", text="Be {{ tone }}.", actor="ops")
    assert api_client.get("/api/v1/prompts/house-style").json()["owner"] == "global"
    rendered = api_client.post(
        "/api/v1/prompts/house-style/render", {"variables": {"tone": "brief"}}, format="json"
    )
    assert rendered.json()["text"] == "Be brief."
    response = api_client.post("/api/v1/prompts/house-style/versions", {"text": "x"}, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "global_prompt_read_only"


def test_another_tenants_prompt_is_invisible(other_tenant, api_client):
    prompt_template_create(tenant=other_tenant, name="secret", kind="text", text="classified", actor="t")
    assert api_client.get("/api/v1/prompts").json()["results"] == []
    assert api_client.get("/api/v1/prompts/secret").status_code == 404
    assert api_client.post("/api/v1/prompts/secret/render", {}, format="json").status_code == 404


def test_nul_characters_are_400_not_500(api_client, chat_client):
    bad = api_client.post("/api/v1/prompts", {**SUPPORT, "model_config": {"model": "a\u0000"}}, format="json")
    assert bad.status_code == 400
    api_client.post("/api/v1/prompts", SUPPORT, format="json")
    response = chat_client.post(
        "/api/v1/prompts/faq/render", {"variables": {"question": "a\u0000b"}}, format="json"
    )
    assert response.status_code == 400
