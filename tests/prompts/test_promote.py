from __future__ import annotations

import pytest

from prompts.models import ExperimentStatus, PromptLabel
from prompts.services import experiment_start, experiment_stop, prompt_template_create, prompt_version_create
from tenants.models import AuditEvent, Scope
from tests.conftest import client_with_key


@pytest.fixture
def faq(tenant):
    template = prompt_template_create(tenant=tenant, name="faq", kind="text", text="a {{ q }}", actor="t")
    prompt_version_create(template=template, text="b {{ q }}", actor="t")
    prompt_version_create(template=template, text="c {{ q }}", actor="t")
    return template


@pytest.fixture
def experiment(faq):
    return experiment_start(template=faq, variants=[(1, 50), (2, 50)], actor="t")


def variant_of(experiment, number: int) -> int:
    return experiment.variants.get(version__number=number).pk


def production(template) -> int:
    return PromptLabel.objects.get(template=template, name="production").version.number


def promote(client, experiment, body):
    return client.post(f"/api/v1/prompts/faq/experiments/{experiment.pk}/promote", body, format="json")


def test_promote_stops_the_experiment_and_moves_production(faq, experiment, api_client, tenant, make_key):
    chat = client_with_key(make_key(tenant, scopes=[Scope.CHAT])[1])
    render = {"user": "u-1", "variables": {"q": "x"}}
    before = chat.post("/api/v1/prompts/faq/render", render, format="json").json()
    assert before["experiment"] == experiment.pk  # this process now holds the snapshot with the experiment

    response = promote(api_client, experiment, {"variant": variant_of(experiment, 2)})

    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["label"], body["version"], body["previous_version"]) == ("production", 2, 1)
    assert body["experiment"]["status"] == "stopped"
    experiment.refresh_from_db()
    assert experiment.status == ExperimentStatus.STOPPED
    assert production(faq) == 2
    actions = list(AuditEvent.objects.filter(tenant=tenant).values_list("action", "changes"))
    assert ("experiment.stop", {"status": ["running", "stopped"]}) in actions
    assert ("prompt_label.move", {"label": ["production", "production"], "version": [1, 2]}) in actions
    promoted = [changes for action, changes in actions if action == "experiment.promote"]
    assert promoted == [{"variant": [None, variant_of(experiment, 2)], "production": [1, 2]}]
    # The caches were invalidated: every user now gets production, v2, outside any experiment.
    after = chat.post("/api/v1/prompts/faq/render", render, format="json").json()
    assert (after["version"], after["experiment"], after["variant"], after["text"]) == (2, None, None, "b x")


def test_a_variant_of_another_experiment_is_refused(faq, experiment, api_client):
    other = experiment_start(template=faq, variants=[(3, 100)], actor="t")  # stops `experiment`
    other_variant = variant_of(other, 3)
    fresh = experiment_start(template=faq, variants=[(1, 50), (2, 50)], actor="t")
    response = promote(api_client, fresh, {"variant": other_variant})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "variant"
    fresh.refresh_from_db()
    assert fresh.status == ExperimentStatus.RUNNING
    assert production(faq) == 1
    assert not AuditEvent.objects.filter(action="experiment.promote").exists()


def test_a_stopped_experiment_is_a_409(faq, experiment, api_client):
    experiment_stop(experiment=experiment, actor="t")
    response = promote(api_client, experiment, {"variant": variant_of(experiment, 2)})
    assert response.status_code == 409
    assert response.json()["error"]["type"] == "conflict_error"
    assert production(faq) == 1


@pytest.mark.parametrize(
    "body", [{}, {"variant": "two"}, {"variant": 0}, {"variant": 2**64}, {"variant": None}, {"variant": 1.5}]
)
def test_bad_bodies_are_400(faq, experiment, api_client, body):
    response = promote(api_client, experiment, body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "variant"
    experiment.refresh_from_db()
    assert experiment.status == ExperimentStatus.RUNNING


def test_promote_needs_the_admin_scope(experiment, tenant, make_key):
    reader = client_with_key(make_key(tenant, scopes=[Scope.CHAT, Scope.TRACES_READ])[1])
    response = promote(reader, experiment, {"variant": variant_of(experiment, 2)})
    assert response.status_code == 403
    experiment.refresh_from_db()
    assert experiment.status == ExperimentStatus.RUNNING


def test_a_global_prompts_experiment_cannot_be_promoted_by_a_tenant(api_client):
    template = prompt_template_create(tenant=None, name="faq", kind="text", text="a {{ q }}", actor="t")
    prompt_version_create(template=template, text="b {{ q }}", actor="t")
    experiment = experiment_start(template=template, variants=[(1, 50), (2, 50)], actor="t")
    response = promote(api_client, experiment, {"variant": variant_of(experiment, 2)})
    assert response.status_code == 403
    assert production(template) == 1
