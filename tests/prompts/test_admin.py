from __future__ import annotations

import pytest

from prompts.models import Experiment, PromptLabel, PromptTemplate
from prompts.services import prompt_label_move, prompt_version_create
from tenants.models import AuditEvent


def admin_urls(template) -> list[str]:
    base = f"/admin/prompts/prompttemplate/{template.pk}"
    return [
        f"{base}/change/",
        f"{base}/diff/?a=1&b=2",
        f"{base}/labels/",
        f"{base}/preview/?version=1",
        f"{base}/versions/new/?from=1",
        "/admin/prompts/prompttemplate/",
        "/admin/prompts/prompttemplate/add/",
        "/admin/prompts/experiment/add/",
    ]


@pytest.fixture
def two_versions(support_prompt):
    prompt_version_create(
        template=support_prompt,
        actor="t",
        message="terser",
        messages=[
            {"role": "system", "content": "Help {{ company }} customers."},
            {"role": "user", "content": "{{ question }}"},
        ],
        variables={"company": None, "question": None},
    )
    return support_prompt


def test_admin_pages_render_for_staff(admin_client, two_versions):
    for url in admin_urls(two_versions):
        assert admin_client.get(url).status_code == 200, url


def test_admin_pages_redirect_anonymous_to_login(client, two_versions):
    for url in admin_urls(two_versions):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/")


def test_diff_shows_both_versions_side_by_side(admin_client, two_versions):
    page = admin_client.get(f"/admin/prompts/prompttemplate/{two_versions.pk}/diff/?a=1&b=2").content.decode()
    assert "v1" in page
    assert "v2" in page
    assert "diff_chg" in page or "diff_sub" in page


def test_label_move_and_one_click_rollback(admin_client, two_versions):
    url = f"/admin/prompts/prompttemplate/{two_versions.pk}/labels/"
    response = admin_client.post(url, {"move": "1", "label": "production", "version": 2})
    assert response.status_code == 302
    assert PromptLabel.objects.get(template=two_versions, name="production").version.number == 2
    admin_client.post(url, {"rollback": "1", "label": "production"})
    assert PromptLabel.objects.get(template=two_versions, name="production").version.number == 1
    history = admin_client.get(url).content.decode()
    assert "user:admin" in history
    assert AuditEvent.objects.filter(action="prompt_label.move", actor="user:admin").count() == 2


def test_new_version_from_an_old_one(admin_client, two_versions):
    url = f"/admin/prompts/prompttemplate/{two_versions.pk}/versions/new/?from=1"
    form = admin_client.get(url).content.decode()
    assert "You help customers of" in form  # prefilled from v1
    response = admin_client.post(
        url,
        {
            "messages": '[{"role": "user", "content": "{{ question }}?"}]',
            "text": "",
            "variables": "",
            "model_config": "",
            "message": "admin edit",
        },
    )
    assert response.status_code == 302
    assert two_versions.versions.first().number == 3
    bad = admin_client.post(url, {"messages": "[not json", "text": "", "variables": "", "model_config": ""})
    assert bad.status_code == 200
    assert "Not valid JSON" in bad.content.decode()
    assert two_versions.versions.count() == 3


def test_preview_renders_with_sample_variables(admin_client, two_versions):
    url = f"/admin/prompts/prompttemplate/{two_versions.pk}/preview/?version=1"
    page = admin_client.post(
        url, {"variables": '{"company": "Initech", "question": "TPS?"}'}
    ).content.decode()
    assert "You help customers of Initech in a friendly tone." in page
    missing = admin_client.post(url, {"variables": "{}"}).content.decode()
    assert "Missing required variable" in missing


def test_admin_creates_a_global_template(admin_client, db):
    response = admin_client.post(
        "/admin/prompts/prompttemplate/add/",
        {
            "name": "house",
            "kind": "text",
            "text": "Be {{ tone }}.",
            "messages": "",
            "variables": "",
            "model_config": "",
            "description": "",
            "tenant": "",
        },
    )
    assert response.status_code == 302
    template = PromptTemplate.objects.get(name="house")
    assert template.tenant is None
    assert template.labels.get().name == "production"


def test_experiment_admin_validates_weights_and_rebalances(admin_client, two_versions):
    v1, v2 = two_versions.versions.order_by("number")
    data = {
        "template": two_versions.pk,
        "name": "terse vs friendly",
        "variants-TOTAL_FORMS": 2,
        "variants-INITIAL_FORMS": 0,
        "variants-0-version": v1.pk,
        "variants-0-weight": 60,
        "variants-1-version": v2.pk,
        "variants-1-weight": 30,
    }
    bad = admin_client.post("/admin/prompts/experiment/add/", data)
    assert bad.status_code == 200
    assert "must sum to 100" in bad.content.decode()
    assert not Experiment.objects.exists()
    data["variants-1-weight"] = 40
    assert admin_client.post("/admin/prompts/experiment/add/", data).status_code == 302
    experiment = Experiment.objects.get()
    assert experiment.status == "draft"
    admin_client.post(
        "/admin/prompts/experiment/", {"action": "start_experiments", "_selected_action": [experiment.pk]}
    )
    experiment.refresh_from_db()
    assert experiment.status == "running"
    assert sorted(v.weight for v in experiment.variants.all()) == [40, 60]


def test_label_moves_from_services_show_in_admin_history(admin_client, two_versions):
    prompt_label_move(
        template=two_versions, label="staging", version=two_versions.versions.first(), actor="cli"
    )
    page = admin_client.get(f"/admin/prompts/prompttemplate/{two_versions.pk}/labels/").content.decode()
    assert "staging" in page


def test_stopped_experiments_are_read_only_in_the_admin(admin_client, two_versions):
    from prompts.services import experiment_start, experiment_stop

    experiment = experiment_start(template=two_versions, variants=[(1, 50), (2, 50)], actor="t")
    experiment_stop(experiment=experiment, actor="t")
    page = admin_client.get(f"/admin/prompts/experiment/{experiment.pk}/change/")
    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    response = admin_client.post(f"/admin/prompts/experiment/{experiment.pk}/change/", {"name": "renamed"})
    assert response.status_code == 403
    experiment.refresh_from_db()
    assert experiment.name == ""


def test_admin_pages_with_non_numeric_params_do_not_500(admin_client, two_versions):
    base = f"/admin/prompts/prompttemplate/{two_versions.pk}"
    for url in (f"{base}/preview/?version=abc", f"{base}/versions/new/?from=x", f"{base}/diff/?a=x&b=y"):
        assert admin_client.get(url).status_code == 200, url
