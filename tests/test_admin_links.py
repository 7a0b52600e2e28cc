"""Every link of the admin leads somewhere: a staff user's crawl from /admin/ over every page of every
app, with data in every model, meets no 404, no 500, no "... doesn't exist" redirect and no link
with a Python None in its query."""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import Resolver404, resolve, reverse
from django.utils import timezone

from billing import services as billing_services
from billing.models import ModelPrice, UsageKind
from billing.pricing_data import seed_prices
from billing.services import budget_update, invoice_finalize, invoice_generate, invoice_void, usage_record
from chat import embeddings
from chat.documents import document_create, document_ingest, documents_cache
from chat.services import ChatParams, chat_complete, chat_settings_cache, chat_settings_update
from monitoring.models import FeedbackMetric
from monitoring.services import feedback_submit
from prompts import selectors as prompt_selectors
from prompts.models import PromptTemplate
from prompts.services import (
    experiment_start,
    prompt_label_move,
    prompt_template_create,
    prompt_version_create,
)
from tenants.models import Tenant
from tests.billing.conftest import last_month, usage_record_at

MAX_PAGES = 2000
# Query parameters that only repeat a page already crawled: the changelist a change page came from.
IGNORED_PARAMS = {"_changelist_filters"}
# Sorting, facets, search and paging of a changelist are crawled on their own, not once per filter.
VIEW_PARAMS = {"o", "_facets", "q", "p", "all"}
# A link with more query parameters than this is another combination of filters already crawled
# (a form's submission, the parameters of one view, is not).
MAX_QUERY_PARAMS = 2
# The admin's message for a missing object, with Django's typographic apostrophe or a plain one.
DEAD = ("doesn't exist", "doesn\N{RIGHT SINGLE QUOTATION MARK}t exist")


class LinkParser(HTMLParser):
    """The <a href>s of a page, and its GET forms as the URL they would request when submitted as
    they are, except that empty text inputs get a word and selects a choice, so that a search runs."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, bool]] = []  # (href, whether a form's submission)
        self._form: dict[str, Any] | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs_list: list[tuple[str, str | None]]) -> None:
        attrs = {name: value or "" for name, value in attrs_list}
        if tag == "a" and attrs.get("href"):
            self.links.append((attrs["href"], False))
        elif tag == "form" and attrs.get("method", "get").lower() == "get":
            self._form = {"action": attrs.get("action", ""), "fields": [], "selects": {}}
        elif self._form is not None:
            self._form_field(tag, attrs)

    def _form_field(self, tag: str, attrs: dict[str, str]) -> None:
        assert self._form is not None
        name = attrs.get("name")
        if tag == "option" and self._select is not None:
            # the selected option, else the first real one (not "-------"), so that a choice is made
            chosen, value = self._form["selects"], attrs.get("value", "")
            if "selected" in attrs or (value and not chosen[self._select]):
                chosen[self._select] = value
        elif not name:
            return
        elif tag == "input":
            kind = attrs.get("type", "text").lower()
            if kind in {"submit", "button", "reset", "image", "file"}:
                return
            if kind in {"checkbox", "radio"} and "checked" not in attrs:
                return
            value = attrs.get("value", "")
            if not value and kind in {"text", "search"}:
                value = "test"
            self._form["fields"].append((name, value))
        elif tag == "select":
            self._select = name
            self._form["selects"].setdefault(name, "")
        elif tag == "textarea":
            self._form["fields"].append((name, "test"))

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "form" and self._form is not None:
            fields = self._form["fields"] + list(self._form["selects"].items())
            self.links.append((f"{self._form['action']}?{urlencode(fields)}", True))
            self._form = None


@dataclass
class Crawl:
    visited: dict[str, str] = field(default_factory=dict)  # url -> the page that linked it
    failures: list[str] = field(default_factory=list)

    def url_names(self) -> set[str]:
        names = set()
        for url in self.visited:
            with contextlib.suppress(Resolver404):  # counted as a failure by the crawl already
                names.add(resolve(urlsplit(url).path).url_name or "")
        return names


def normalized(href: str, page: str, *, form: bool) -> tuple[str, tuple[str, frozenset[str]]] | None:
    """The admin URL a link requests, and the key under which one crawl of it is enough (one per set
    of query parameter names); None for links outside the admin, logout, and combinations of query
    parameters that only repeat pages already crawled."""
    if href.startswith(("javascript:", "mailto:", "#")):
        return None
    parts = urlsplit(urljoin(page, href))
    if parts.netloc not in {"", "testserver"} or not parts.path.startswith("/admin/"):
        return None
    if parts.path == reverse("admin:logout"):
        return None
    params = [(name, value) for name, value in parse_qsl(parts.query) if name not in IGNORED_PARAMS]
    names = frozenset(name for name, _ in params)
    if (len(names) > MAX_QUERY_PARAMS and not form) or (len(names) > 1 and names & VIEW_PARAMS):
        return None
    url = parts.path + (f"?{urlencode(params)}" if params else "")
    return url, (parts.path, names)


def check(client: Client, url: str, source: str, crawl: Crawl) -> str | None:
    """GETs one URL (following redirects); records a failure, or returns the HTML to parse."""
    where = f"{url} (linked from {source})"
    try:
        response = client.get(url, follow=True)
    except Exception as exc:  # every error is a finding of the crawl, named with its page
        crawl.failures.append(f"{where}: raised {type(exc).__name__}: {exc}")
        return None
    final = response.redirect_chain[-1][0] if response.redirect_chain else url
    if response.status_code == 404 or response.status_code >= 500:
        crawl.failures.append(f"{where}: HTTP {response.status_code}")
        return None
    if response.status_code != 200:
        crawl.failures.append(f"{where}: HTTP {response.status_code} at {final}")
        return None
    if urlsplit(final).path == reverse("admin:login"):
        crawl.failures.append(f"{where}: redirected to the login page")
        return None
    if not response["Content-Type"].startswith("text/html"):
        return None
    html = response.content.decode()
    if any(text in html for text in DEAD):
        crawl.failures.append(f"{where}: dead link, redirected to {final} saying it doesn't exist")
        return None
    return html


def crawl_admin(client: Client, forbidden: tuple[str, ...] = ()) -> Crawl:
    """`forbidden`: markup no page may contain for this user (e.g. a Save button)."""
    crawl = Crawl()
    start = reverse("admin:index")
    queue: deque[tuple[str, str]] = deque([(start, "the start")])
    seen = {(start, frozenset[str]())}
    while queue:
        url, source = queue.popleft()
        crawl.visited[url] = source
        assert len(crawl.visited) <= MAX_PAGES, f"the crawl passed {MAX_PAGES} pages; last {url}"
        html = check(client, url, source, crawl)
        if html is None:
            continue
        crawl.failures.extend(
            f"{url} (linked from {source}) shows {text!r}" for text in forbidden if text in html
        )
        parser = LinkParser()
        parser.feed(html)
        for href, form in parser.links:
            link = normalized(href, url, form=form)
            if link is not None and "None" in dict(parse_qsl(urlsplit(link[0]).query)).values():
                crawl.failures.append(f"{link[0]} (linked from {url}): a Python None in the link")
            if link is not None and link[1] not in seen:
                seen.add(link[1])
                queue.append((link[0], url))
    return crawl


@pytest.fixture
def admin_world(tenant: Tenant, other_tenant: Tenant, make_key: Any) -> PromptTemplate:
    """At least one object of every model the admin shows, made by the services that make them:
    a chat turn (conversation, messages, trace and spans, usage, budget period), an alert, a document
    with chunks, a prompt with versions, labels and experiments, and draft, finalized and void invoices."""
    billing_services.price_table.clear()
    billing_services._period_ids.clear()
    chat_settings_cache.clear()
    documents_cache.clear()
    embeddings._query_vectors = embeddings._LocalLRU(4096)
    prompt_selectors.prompt_snapshots.clear()
    prompt_selectors._versions.clear()
    seed_prices(ModelPrice)

    Group.objects.create(name="operators")
    make_key(tenant)
    make_key(other_tenant, name="expiring", expires_at=timezone.now() + timedelta(days=1))
    chat_settings_update(tenant=tenant, actor="test", fallback_chain=["local:local"])
    budget_update(tenant=tenant, actor="test", monthly_budget_usd=Decimal("0.01"))

    document, _ = document_create(
        tenant=tenant,
        content=b"Refunds are accepted within 30 days.\n\nShipping takes five days.",
        content_type="text/plain",
        title="Policies",
        enqueue=False,
    )
    document_ingest(document_id=document.pk)

    template = prompt_template_create(
        tenant=tenant,
        name="support",
        kind="chat",
        actor="test",
        messages=[{"role": "system", "content": "You answer for {{ company }}."}],
    )
    prompt_version_create(
        template=template, actor="test", messages=[{"role": "system", "content": "Be brief, {{ company }}."}]
    )
    prompt_label_move(
        template=template, label="production", version=template.versions.get(number=1), actor="t"
    )
    prompt_label_move(template=template, label="staging", version=template.versions.get(number=2), actor="t")
    experiment_start(template=template, variants=[(1, 50), (2, 50)], actor="test", name="first")
    experiment_start(template=template, variants=[(1, 20), (2, 80)], actor="test", name="second")
    prompt_template_create(
        tenant=None, name="summary", kind="text", actor="test", text="Summarize {{ text }}."
    )

    answer = chat_complete(
        tenant=tenant,
        params=ChatParams(
            endpoint="chat",
            message="How long do refunds take?",
            prompt="support",
            variables={"company": "Acme"},
        ),
    )
    FeedbackMetric.objects.create(tenant=tenant, name="stars", kind="scale", scale_min=1, scale_max=5)
    feedback_submit(tenant=tenant, trace=str(answer.trace_id), score=1, comment="helpful")
    feedback_submit(tenant=tenant, trace=str(answer.trace_id), name="stars", score=4)
    for owner in (tenant, other_tenant):  # enough to cross the $0.01 budget's alert thresholds
        usage_record(
            tenant=owner,
            request_id=f"embed-{owner.slug}",
            kind=UsageKind.EMBEDDING,
            provider="openai",
            model="text-embedding-3-small",
            input_tokens=2_000_000,
        )
    invoice_generate(tenant=tenant, period=timezone.localdate().replace(day=1), actor="test")  # a draft
    # Only a month that has ended is finalized: last month's usage, stamped with its date.
    usage_record_at(other_tenant, last_month(), request_id="last-month")
    finalized = invoice_finalize(
        invoice=invoice_generate(tenant=other_tenant, period=last_month(), actor="test"), actor="t"
    )
    replacement = invoice_void(invoice=finalized, reason="wrong address", actor="test")
    assert replacement is not None  # the month has usage, so the void opens a replacement
    invoice_finalize(invoice=replacement, actor="test")
    return template


def test_every_admin_link_leads_to_a_page(
    client: Client, admin_user: Any, admin_world: PromptTemplate
) -> None:
    client.force_login(admin_user)
    crawl = crawl_admin(client)

    if crawl.failures:
        pytest.fail(
            f"{len(crawl.failures)} broken admin link(s):\n" + "\n".join(crawl.failures), pytrace=False
        )

    names = crawl.url_names()
    for model in admin.site._registry:
        opts = model._meta
        assert model._default_manager.exists(), f"no {opts.label} to crawl: add one to admin_world"
        for view in ("changelist", "change"):
            name = f"{opts.app_label}_{opts.model_name}_{view}"
            assert name in names, f"the crawl never reached admin:{name}"
    custom_views = {
        "prompts_version_new",
        "prompts_version_diff",
        "prompts_version_preview",
        "prompts_labels",
        "billing_invoice_pdf",
        "billing_invoice_void",
        "billing_tenant_usage",
        "billing_invoice_generate",
        "chat_circuits",
        "chat_document_search",
        "tenants_apikey_revoke",
    }
    assert custom_views <= names, f"the crawl never reached {sorted(custom_views - names)}"
    prompt_pages = {
        reverse(f"admin:{name}", args=[admin_world.pk])
        for name in (
            "prompts_version_new",
            "prompts_version_diff",
            "prompts_version_preview",
            "prompts_labels",
        )
    }
    assert prompt_pages <= {urlsplit(url).path for url in crawl.visited}


# What a user without write permissions must not be offered: save, delete, add, generate, revoke,
# rotate, void, create a key (the admin's own markup and this project's object tools).
WRITE_CONTROLS = (
    'name="_save"',
    'name="_continue"',
    'class="deletelink"',
    'class="addlink"',
    "Generate invoices",
    "Revoke now",
    "Create API key",
    'value="revoke_keys"',
    'value="rotate_keys"',
    'value="finalize_drafts"',
    "void…",
    "Circuit breakers",
    "Search as a tenant",
)


def staff(django_user_model: Any, name: str, permissions: Any = ()) -> Any:
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(name, password="pw-for-tests", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=list(permissions)))
    return user


def test_view_only_staff_see_every_page_and_no_write_control(
    client: Client, django_user_model: Any, admin_world: PromptTemplate
) -> None:
    from django.contrib.auth.models import Permission

    views = Permission.objects.filter(codename__startswith="view_").exclude(codename="view_circuits")
    client.force_login(staff(django_user_model, "viewer", views.values_list("codename", flat=True)))
    crawl = crawl_admin(client, forbidden=WRITE_CONTROLS)
    # Django's own user page links its password form for every viewer; that form refuses them.
    failures = [failure for failure in crawl.failures if not failure.startswith("/admin/auth/user/")]
    if failures:
        pytest.fail(f"{len(failures)} finding(s):\n" + "\n".join(failures), pytrace=False)
    names = crawl.url_names()
    for model in admin.site._registry:
        assert f"{model._meta.app_label}_{model._meta.model_name}_change" in names

    tenant = Tenant.objects.get(slug="acme")
    refused = [
        client.post(reverse("admin:tenants_tenant_change", args=[tenant.pk]), {"name": "x"}),
        client.get(reverse("admin:tenants_apikey_add")),
        client.get(reverse("admin:billing_invoice_generate")),
        client.get(reverse("admin:chat_circuits")),
        client.get(reverse("admin:chat_document_search")),
    ]
    assert [response.status_code for response in refused] == [403] * len(refused)
    assert Tenant.objects.get(pk=tenant.pk).name == "Acme"


def test_staff_without_permissions_get_the_admins_403_everywhere(
    client: Client, admin_client: Client, django_user_model: Any, admin_world: PromptTemplate
) -> None:
    # Every page but the index, one's own password form and the app indexes (Django answers 404
    # for an app the user has no permission in).
    app_indexes = {
        reverse("admin:app_list", args=[app])
        for app in ("auth", "tenants", "billing", "chat", "prompts", "monitoring")
    }
    own = {reverse("admin:index"), reverse("admin:password_change"), *app_indexes}
    pages = [url for url in crawl_admin(admin_client).visited if urlsplit(url).path not in own]
    client.force_login(staff(django_user_model, "nobody"))
    index = client.get(reverse("admin:index")).content.decode()
    assert "permission to view or edit anything" in index
    allowed = []
    for url in pages:
        response = client.get(url)
        if response.status_code != 403:
            allowed.append(f"{url}: HTTP {response.status_code}")
        elif b"Permission denied" not in response.content or b'id="site-name"' not in response.content:
            allowed.append(f"{url}: a 403 without the admin's page")
    assert not allowed, "\n".join(allowed)


def test_circuits_and_search_as_tenant_need_their_own_permission(
    client: Client, django_user_model: Any, admin_world: PromptTemplate
) -> None:
    client.force_login(
        staff(
            django_user_model,
            "operator",
            ["view_chatsettings", "view_document", "view_circuits", "search_as_tenant"],
        )
    )
    assert "Circuit breakers" in client.get(reverse("admin:chat_chatsettings_changelist")).content.decode()
    assert "Search as a tenant" in client.get(reverse("admin:chat_document_changelist")).content.decode()
    assert client.get(reverse("admin:chat_circuits")).status_code == 200
    assert client.get(reverse("admin:chat_document_search")).status_code == 200
