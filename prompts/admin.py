"""The operator's prompt console: templates with read-only versions, new version from any version,
side-by-side diff, preview, audited label moves with one-click rollback, and experiments."""

from __future__ import annotations

import difflib
import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join

from prompts.models import (
    PRODUCTION_LABEL,
    Experiment,
    ExperimentStatus,
    ExperimentVariant,
    PromptTemplate,
    PromptVersion,
    TemplateKind,
)
from prompts.selectors import ResolvedPrompt, VersionSnapshot, prompt_render
from prompts.services import (
    experiment_run,
    experiment_set_weights,
    experiment_stop,
    label_moves,
    prompt_label_move,
    prompt_label_rollback,
    prompt_template_create,
    prompt_version_create,
)
from tenants.admin import actor_for
from tenants.errors import DomainError
from tenants.models import Tenant


def version_lines(version: PromptVersion) -> list[str]:
    """A version as plain lines, for the diff."""
    lines = []
    if version.messages is not None:
        for message in version.messages:
            lines.append(f"[{message['role']}]")
            lines.extend(message["content"].splitlines() or [""])
    else:
        lines.extend((version.text or "").splitlines())
    lines.append("")
    lines.append("variables: " + json.dumps(version.variables, sort_keys=True))
    lines.append("model_config: " + json.dumps(version.model_config, sort_keys=True))
    return lines


class JSONTextField(forms.CharField):
    """A textarea holding JSON; empty means None."""

    widget = forms.Textarea(attrs={"rows": 8, "cols": 90, "style": "font-family: monospace"})

    def to_python(self, value: Any) -> Any:
        text = super().to_python(value)
        if not text:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(
                f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
            ) from exc


class VersionContentForm(forms.Form):
    messages = JSONTextField(
        required=False, help_text='Chat: [{"role": "system", "content": "... {{ var }}"}]'
    )
    text = forms.CharField(
        required=False, widget=forms.Textarea(attrs={"rows": 8, "cols": 90}), help_text="Text templates only."
    )
    variables = JSONTextField(
        required=False, help_text='{"name": "default" or null}; empty: inferred, required'
    )
    model_config = JSONTextField(
        required=False, help_text='{"model": ..., "temperature": ..., "max_tokens": ...}'
    )
    message = forms.CharField(required=False, max_length=500, help_text="What changed and why.")


class TemplateCreateForm(VersionContentForm):
    tenant = forms.ModelChoiceField(
        queryset=Tenant.objects.order_by("name"),
        required=False,
        help_text="Empty: a global template, available to every tenant.",
    )
    name = forms.SlugField(max_length=100)
    kind = forms.ChoiceField(choices=TemplateKind.choices)
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2, "cols": 90}))


class LabelMoveForm(forms.Form):
    label = forms.SlugField(max_length=50, initial=PRODUCTION_LABEL)
    version = forms.IntegerField(min_value=1)


def int_param(request: HttpRequest, name: str) -> int:
    """A numeric query parameter, 0 when missing or not a number (no 500 for a hand-edited URL)."""
    value = request.GET.get(name, "")
    return int(value) if value.isdigit() else 0


def apply_domain_error(form: forms.Form, error: DomainError) -> None:
    field = (error.param or "").split(".")[0]
    form.add_error(field if field in form.fields else None, error.message)


class PromptVersionInline(admin.TabularInline):
    model = PromptVersion
    fields = ("number", "message", "author", "created_at", "labels_here", "actions_links")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ["-number"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # new versions come from "new version from this one"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="labels")
    def labels_here(self, version: PromptVersion) -> str:
        return ", ".join(label.name for label in version.labels.all()) or "-"

    @admin.display(description="")
    def actions_links(self, version: PromptVersion) -> str:
        new = reverse("admin:prompts_version_new", args=[version.template_id])
        return format_html(
            '<a href="{}?from={}">new version from this one</a> · {}',
            new,
            version.number,
            self.read_links(version),
        )

    def read_links(self, version: PromptVersion) -> str:
        args = [version.template_id]
        return format_html(
            '<a href="{}?version={}">preview</a> · <a href="{}?a={}&b={}">diff with previous</a>',
            reverse("admin:prompts_version_preview", args=args),
            version.number,
            reverse("admin:prompts_version_diff", args=args),
            max(version.number - 1, 1),
            version.number,
        )


class PromptVersionViewInline(PromptVersionInline):
    """For users who may only view: no "new version" link."""

    @admin.display(description="")
    def actions_links(self, version: PromptVersion) -> str:
        return self.read_links(version)


@admin.register(PromptTemplate)
class PromptTemplateAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "kind", "production_version", "running_experiment", "updated_at"]
    list_filter = ["kind", ("tenant", admin.EmptyFieldListFilter), "tenant"]
    search_fields = ["name", "description", "tenant__name", "tenant__slug"]
    list_select_related = ["tenant"]
    fields = ["name", "tenant", "kind", "description", "labels_summary", "experiments_summary"]
    readonly_fields = ["name", "tenant", "kind", "labels_summary", "experiments_summary"]
    inlines = [PromptVersionInline]

    @admin.display(description="owner")
    def owner(self, template: PromptTemplate) -> str:
        return "global" if template.tenant_id is None else str(template.tenant)

    @admin.display(description="production")
    def production_version(self, template: PromptTemplate) -> str:
        label = template.labels.filter(name=PRODUCTION_LABEL).select_related("version").first()
        return f"v{label.version.number}" if label else "-"

    @admin.display(description="experiment")
    def running_experiment(self, template: PromptTemplate) -> str:
        experiment = template.experiments.filter(status=ExperimentStatus.RUNNING).first()
        return str(experiment) if experiment else "-"

    @admin.display(description="labels")
    def labels_summary(self, template: PromptTemplate) -> str:
        rows = format_html_join(
            ", ",
            "{} → v{}",
            ((label.name, label.version.number) for label in template.labels.select_related("version")),
        )
        return format_html(
            '{} &nbsp; <a class="button" href="{}">Move labels / history / rollback</a>',
            rows or "-",
            reverse("admin:prompts_labels", args=[template.pk]),
        )

    @admin.display(description="experiments")
    def experiments_summary(self, template: PromptTemplate) -> str:
        add_url = reverse("admin:prompts_experiment_add") + f"?template={template.pk}"
        rows = format_html_join(
            ", ",
            '<a href="{}">{} ({})</a>',
            (
                (reverse("admin:prompts_experiment_change", args=[e.pk]), e, e.status)
                for e in template.experiments.all()[:5]
            ),
        )
        return format_html('{} &nbsp; <a href="{}">New experiment</a>', rows or "-", add_url)

    def get_inlines(self, request: HttpRequest, obj: PromptTemplate | None) -> list[Any]:
        # Write links only for users who may use them; the others' would end on a 403.
        return [PromptVersionInline if self.has_change_permission(request, obj) else PromptVersionViewInline]

    def get_readonly_fields(self, request: HttpRequest, obj: PromptTemplate | None = None) -> list[str]:
        if request.user.has_perm("prompts.add_experiment"):
            return list(self.readonly_fields)
        return [field for field in self.readonly_fields if field != "experiments_summary"] + [
            "experiments_list"
        ]

    def get_fields(self, request: HttpRequest, obj: PromptTemplate | None = None) -> Any:
        fields = [str(field) for field in self.fields]
        if "experiments_list" in self.get_readonly_fields(request, obj):
            fields[fields.index("experiments_summary")] = "experiments_list"
        return fields

    @admin.display(description="experiments")
    def experiments_list(self, template: PromptTemplate) -> str:
        return (
            format_html_join(
                ", ",
                '<a href="{}">{} ({})</a>',
                (
                    (reverse("admin:prompts_experiment_change", args=[e.pk]), e, e.status)
                    for e in template.experiments.all()[:5]
                ),
            )
            or "-"
        )

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("<int:template_id>/versions/new/", view(self.new_version_view), name="prompts_version_new"),
            path("<int:template_id>/diff/", view(self.diff_view), name="prompts_version_diff"),
            path("<int:template_id>/preview/", view(self.preview_view), name="prompts_version_preview"),
            path("<int:template_id>/labels/", view(self.labels_view), name="prompts_labels"),
            *super().get_urls(),
        ]

    def _context(
        self, request: HttpRequest, template: PromptTemplate | None, title: str, **extra: Any
    ) -> dict:
        return {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "template_obj": template,
            "title": title,
            **extra,
        }

    def _template(self, request: HttpRequest, template_id: int, *, change: bool) -> PromptTemplate:
        template = get_object_or_404(PromptTemplate, pk=template_id)
        allowed = (
            self.has_change_permission(request, template)
            if change
            else self.has_view_permission(request, template)
        )
        if not allowed:
            raise PermissionDenied
        return template

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = TemplateCreateForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                template = prompt_template_create(
                    tenant=data["tenant"],
                    name=data["name"],
                    kind=data["kind"],
                    description=data["description"],
                    messages=data["messages"],
                    text=data["text"] or None,
                    variables=data["variables"],
                    model_config=data["model_config"],
                    actor=actor_for(request),
                )
            except DomainError as error:
                apply_domain_error(form, error)
            else:
                return HttpResponseRedirect(
                    reverse("admin:prompts_prompttemplate_change", args=[template.pk])
                )
        return TemplateResponse(
            request, "admin/prompts/form.html", self._context(request, None, "Add prompt template", form=form)
        )

    def new_version_view(self, request: HttpRequest, template_id: int) -> HttpResponse:
        template = self._template(request, template_id, change=True)
        source = (
            template.versions.filter(number=int_param(request, "from")).first() or template.versions.first()
        )
        initial = {}
        if source is not None:
            initial = {
                "messages": json.dumps(source.messages, indent=2) if source.messages is not None else "",
                "text": source.text or "",
                "variables": json.dumps(source.variables, indent=2),
                "model_config": json.dumps(source.model_config, indent=2),
            }
        form = VersionContentForm(request.POST or None, initial=initial)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                version = prompt_version_create(
                    template=template,
                    messages=data["messages"],
                    text=data["text"] or None,
                    variables=data["variables"],
                    model_config=data["model_config"],
                    message=data["message"],
                    actor=actor_for(request),
                )
            except DomainError as error:
                apply_domain_error(form, error)
            else:
                messages.success(request, f"Created version {version.number}. Labels did not move.")
                return HttpResponseRedirect(
                    reverse("admin:prompts_prompttemplate_change", args=[template.pk])
                )
        title = f"New version of {template.name}" + (f" from v{source.number}" if source else "")
        return TemplateResponse(
            request, "admin/prompts/form.html", self._context(request, template, title, form=form)
        )

    def diff_view(self, request: HttpRequest, template_id: int) -> HttpResponse:
        template = self._template(request, template_id, change=False)
        versions = list(template.versions.order_by("number"))
        by_number = {version.number: version for version in versions}
        try:
            a = by_number[int(request.GET.get("a", 0))]
            b = by_number[int(request.GET.get("b", 0))]
        except (KeyError, ValueError):
            a, b = (versions[-2], versions[-1]) if len(versions) > 1 else (versions[0], versions[0])
        table = difflib.HtmlDiff(wrapcolumn=80).make_table(
            version_lines(a), version_lines(b), fromdesc=f"v{a.number}", todesc=f"v{b.number}"
        )
        return TemplateResponse(
            request,
            "admin/prompts/diff.html",
            self._context(
                request,
                template,
                f"{template.name}: v{a.number} ↔ v{b.number}",
                table=table,
                versions=versions,
                a=a.number,
                b=b.number,
            ),
        )

    def preview_view(self, request: HttpRequest, template_id: int) -> HttpResponse:
        template = self._template(request, template_id, change=False)
        version = (
            template.versions.filter(number=int_param(request, "version")).first()
            or template.versions.first()
        )
        if version is None:
            raise Http404("This template has no version.")
        form = forms.Form(request.POST or None)
        form.fields["variables"] = JSONTextField(
            required=False, initial=json.dumps(dict.fromkeys(version.variables, "sample"), indent=2)
        )
        rendered = None
        if request.method == "POST" and form.is_valid():
            resolved = ResolvedPrompt(template.name, template.kind, VersionSnapshot.of(version), None, None)
            try:
                rendered = prompt_render(resolved=resolved, variables=form.cleaned_data["variables"] or {})
            except DomainError as error:
                form.add_error("variables", error.message)
        return TemplateResponse(
            request,
            "admin/prompts/preview.html",
            self._context(
                request,
                template,
                f"Preview {template.name} v{version.number}",
                form=form,
                rendered=rendered,
                version=version,
            ),
        )

    def labels_view(self, request: HttpRequest, template_id: int) -> HttpResponse:
        template = self._template(request, template_id, change=request.method == "POST")
        form = LabelMoveForm(request.POST if "move" in request.POST else None)
        if request.method == "POST":
            try:
                if "rollback" in request.POST:
                    label = prompt_label_rollback(
                        template=template,
                        label=request.POST.get("label") or PRODUCTION_LABEL,
                        actor=actor_for(request),
                    )
                    messages.success(request, f"Rolled '{label.name}' back to v{label.version.number}.")
                    return HttpResponseRedirect(request.path)
                if form.is_valid():
                    version = template.versions.filter(number=form.cleaned_data["version"]).first()
                    if version is None:
                        form.add_error("version", "No such version.")
                    else:
                        prompt_label_move(
                            template=template,
                            label=form.cleaned_data["label"],
                            version=version,
                            actor=actor_for(request),
                        )
                        messages.success(
                            request, f"Moved '{form.cleaned_data['label']}' to v{version.number}."
                        )
                        return HttpResponseRedirect(request.path)
            except DomainError as error:
                messages.error(request, error.message)
        labels = list(template.labels.select_related("version"))
        return TemplateResponse(
            request,
            "admin/prompts/labels.html",
            self._context(
                request,
                template,
                f"Labels of {template.name}",
                form=form,
                labels=labels,
                history=label_moves(template=template),
                versions=template.versions.order_by("-number"),
            ),
        )


class VariantFormSet(BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        weights = 0
        for form in self.forms:
            if not form.cleaned_data or form.cleaned_data.get("DELETE"):
                continue
            version = form.cleaned_data.get("version")
            if version is not None and version.template_id != self.instance.template_id:
                raise ValidationError(
                    f"v{version.number} of '{version.template.name}' is not a version of this "
                    "experiment's template."
                )
            weights += form.cleaned_data.get("weight") or 0
        if weights != 100:
            raise ValidationError(f"Variant weights must sum to 100, not {weights}.")


class ExperimentVariantInline(admin.TabularInline):
    model = ExperimentVariant
    formset = VariantFormSet
    fields = ["version", "weight"]
    extra = 2

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "version":
            kwargs["queryset"] = PromptVersion.objects.select_related("template").order_by(
                "template__name", "number"
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_change_permission(self, request: HttpRequest, obj: Experiment | None = None) -> bool:
        return obj is None or obj.status != ExperimentStatus.STOPPED


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    """Weights of a running experiment can be edited: only the difference in users is reassigned."""

    list_display = ["__str__", "template", "status", "started_at", "stopped_at", "created_by"]
    list_filter = ["status", "template"]
    search_fields = ["name", "template__name"]
    readonly_fields = ["status", "started_at", "stopped_at", "created_by"]
    fields = ["template", "name", "status", "started_at", "stopped_at", "created_by"]
    inlines = [ExperimentVariantInline]
    actions = ["start_experiments", "stop_experiments"]

    def get_readonly_fields(self, request: HttpRequest, obj: Experiment | None = None) -> list[str]:
        return [*self.readonly_fields, "template"] if obj else list(self.readonly_fields)

    def has_change_permission(self, request: HttpRequest, obj: Experiment | None = None) -> bool:
        """A stopped experiment is history: viewable, not editable."""
        if obj is not None and obj.status == ExperimentStatus.STOPPED:
            return False
        return super().has_change_permission(request, obj)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, str | list[str]]:
        return {"template": request.GET.get("template", "")}

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # results refer to experiments; stop them instead

    def save_model(self, request: HttpRequest, obj: Experiment, form: forms.ModelForm, change: bool) -> None:
        if not change:
            obj.created_by = actor_for(request)
        obj.save()

    def save_related(self, request: HttpRequest, form: forms.ModelForm, formsets: Any, change: bool) -> None:
        """Variants go through the service, which keeps each user's bucket where it can."""
        weights = [
            (variant_form.cleaned_data["version"].number, variant_form.cleaned_data["weight"])
            for formset in formsets
            for variant_form in formset.forms
            if variant_form.cleaned_data and not variant_form.cleaned_data.get("DELETE")
        ]
        experiment_set_weights(experiment=form.instance, weights=weights, actor=actor_for(request))
        for formset in formsets:  # the admin's change message reads what formset.save() would have set
            formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []

    @admin.action(
        description="Start selected draft experiments (stops the running one of each template)",
        permissions=["change"],
    )
    def start_experiments(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> None:
        for experiment in queryset:
            try:
                experiment_run(experiment=experiment, actor=actor_for(request))
            except DomainError as error:
                self.message_user(request, error.message, messages.WARNING)

    @admin.action(description="Stop selected experiments", permissions=["change"])
    def stop_experiments(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> None:
        for experiment in queryset:
            try:
                experiment_stop(experiment=experiment, actor=actor_for(request))
            except DomainError as error:
                self.message_user(request, error.message, messages.WARNING)
