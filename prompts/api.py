"""Tenant API for prompts: read and render with the `chat` scope, manage own templates with `admin`."""

from __future__ import annotations

from django.db.models import Prefetch
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from prompts.models import Experiment, PromptLabel, PromptTemplate
from prompts.selectors import (
    experiment_results,
    owned_template,
    prompt_render,
    prompt_resolve,
    template_for_tenant,
    visible_templates,
)
from prompts.serializers import (
    ExperimentCreateSerializer,
    ExperimentResultsSerializer,
    LabelMoveSerializer,
    PromoteResultSerializer,
    PromoteSerializer,
    PromptCreateSerializer,
    PromptListSerializer,
    PromptVersionCreateSerializer,
    RenderResultSerializer,
    RenderSerializer,
    experiment_data,
    experiment_results_data,
    rendered_data,
    template_detail,
    template_summary,
    version_data,
)
from prompts.services import (
    experiment_promote,
    experiment_start,
    experiment_stop,
    prompt_label_move,
    prompt_template_create,
    prompt_version_create,
)
from tenants.api import TenantAPIView
from tenants.errors import DomainError, NotFoundError
from tenants.models import Scope
from tenants.openapi import error_responses

NAME = OpenApiParameter("name", str, OpenApiParameter.PATH, description="Prompt name (slug)")
EXPERIMENT_ID = OpenApiParameter("experiment_id", int, OpenApiParameter.PATH)
READ_ACTIONS = {"list", "retrieve", "render"}
# Results are monitoring data (traffic, cost, feedback), read with the traces:read scope.
TRACES_READ_ACTIONS = {"read_experiment_results"}


class PromptViewSet(viewsets.ViewSetMixin, TenantAPIView):
    """Prompts by name: the tenant's own, or the global one of that name when it has none."""

    lookup_field = "name"
    lookup_value_regex = r"[-a-zA-Z0-9_]+"

    def get_required_scope(self) -> str:
        if self.action in TRACES_READ_ACTIONS:
            return Scope.TRACES_READ
        return Scope.CHAT if self.action in READ_ACTIONS else Scope.ADMIN

    @extend_schema(
        responses=PromptListSerializer,
        summary="Prompts visible to this tenant",
    )
    def list(self, request: Request) -> Response:
        templates = visible_templates(tenant=self.tenant).prefetch_related(
            Prefetch("labels", queryset=PromptLabel.objects.select_related("version")), "versions"
        )
        return Response({"results": [template_summary(template) for template in templates]})

    @extend_schema(
        parameters=[NAME],
        responses=OpenApiTypes.OBJECT,
        summary="A prompt with its versions, labels and running experiment",
    )
    def retrieve(self, request: Request, name: str) -> Response:
        return Response(template_detail(template_for_tenant(tenant=self.tenant, name=name)))

    @extend_schema(
        request=PromptCreateSerializer,
        responses={201: OpenApiTypes.OBJECT, **error_responses(409)},
        summary="Create a tenant prompt: version 1, labelled production",
    )
    def create(self, request: Request) -> Response:
        params = PromptCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        template = prompt_template_create(
            tenant=self.tenant,
            name=data["name"],
            kind=data["kind"],
            description=data["description"],
            messages=data.get("messages"),
            text=data.get("text"),
            variables=data.get("variables"),
            model_config=data.get("model_config"),
            actor=self.actor,
        )
        return Response(template_detail(template), status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[NAME],
        request=RenderSerializer,
        responses=RenderResultSerializer,
        summary="Resolve (label, version or experiment variant) and render with variables",
    )
    @action(detail=True, methods=["post"])
    def render(self, request: Request, name: str) -> Response:
        params = RenderSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        resolved = prompt_resolve(
            tenant=self.tenant,
            name=name,
            label=data.get("label"),
            version=data.get("version"),
            user=data.get("user"),
        )
        return Response(rendered_data(prompt_render(resolved=resolved, variables=data["variables"])))

    @extend_schema(
        parameters=[NAME],
        request=PromptVersionCreateSerializer,
        responses={201: OpenApiTypes.OBJECT},
        summary="Add a version (labels do not move)",
    )
    @action(detail=True, methods=["post"])
    def versions(self, request: Request, name: str) -> Response:
        template = owned_template(tenant=self.tenant, name=name)
        params = PromptVersionCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        data = params.validated_data
        version = prompt_version_create(
            template=template,
            messages=data.get("messages"),
            text=data.get("text"),
            variables=data.get("variables"),
            model_config=data.get("model_config"),
            message=data["message"],
            actor=self.actor,
        )
        return Response(version_data(version), status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[NAME, OpenApiParameter("label", str, OpenApiParameter.PATH)],
        request=LabelMoveSerializer,
        responses={200: OpenApiTypes.OBJECT, **error_responses(409)},
        summary="Point a label (production, staging, any) at a version; audited",
    )
    @action(
        detail=True, methods=["put"], url_path=r"labels/(?P<label>[a-z0-9][a-z0-9_-]{0,49})", url_name="label"
    )
    def move_label(self, request: Request, name: str, label: str) -> Response:
        template = owned_template(tenant=self.tenant, name=name)
        params = LabelMoveSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        version = template.versions.filter(number=params.validated_data["version"]).first()
        if version is None:
            raise DomainError(
                f"Prompt '{name}' has no version {params.validated_data['version']}.", param="version"
            )
        moved = prompt_label_move(template=template, label=label, version=version, actor=self.actor)
        return Response({"label": moved.name, "version": version.number, "updated_at": moved.updated_at})

    @extend_schema(
        parameters=[NAME],
        request=ExperimentCreateSerializer,
        responses={201: OpenApiTypes.OBJECT, **error_responses(409)},
        summary="Start an A/B experiment (stops the running one)",
    )
    @action(detail=True, methods=["post"])
    def experiments(self, request: Request, name: str) -> Response:
        template = owned_template(tenant=self.tenant, name=name)
        params = ExperimentCreateSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        variants = [(v["version"], v["weight"]) for v in params.validated_data["variants"]]
        experiment = experiment_start(
            template=template, variants=variants, name=params.validated_data["name"], actor=self.actor
        )
        return Response(experiment_data(experiment), status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[NAME, EXPERIMENT_ID],
        request=None,
        responses={200: OpenApiTypes.OBJECT, **error_responses(409)},
        summary="Stop an experiment",
    )
    @action(
        detail=True,
        methods=["post"],
        url_path=r"experiments/(?P<experiment_id>[0-9]+)/stop",
        url_name="experiment-stop",
    )
    def stop_experiment(self, request: Request, name: str, experiment_id: str) -> Response:
        experiment = _experiment_of(owned_template(tenant=self.tenant, name=name), experiment_id)
        return Response(experiment_data(experiment_stop(experiment=experiment, actor=self.actor)))

    @extend_schema(
        parameters=[NAME, EXPERIMENT_ID],
        responses=ExperimentResultsSerializer,
        summary="Per-variant statistics of an experiment, and each variant against the control",
    )
    @action(
        detail=True,
        methods=["get"],
        url_path=r"experiments/(?P<experiment_id>[0-9]+)/results",
        url_name="experiment-results",
    )
    def read_experiment_results(self, request: Request, name: str, experiment_id: str) -> Response:
        experiment = _experiment_of(template_for_tenant(tenant=self.tenant, name=name), experiment_id)
        results = experiment_results(tenant=self.tenant, experiment=experiment)
        return Response(experiment_results_data(experiment, results))

    @extend_schema(
        parameters=[NAME, EXPERIMENT_ID],
        request=PromoteSerializer,
        responses=PromoteResultSerializer,
        summary="Adopt a variant: stop the experiment and move production to its version; audited",
    )
    @action(
        detail=True,
        methods=["post"],
        url_path=r"experiments/(?P<experiment_id>[0-9]+)/promote",
        url_name="experiment-promote",
    )
    def promote_experiment(self, request: Request, name: str, experiment_id: str) -> Response:
        experiment = _experiment_of(owned_template(tenant=self.tenant, name=name), experiment_id)
        params = PromoteSerializer(data=request.data)
        params.is_valid(raise_exception=True)
        promotion = experiment_promote(
            experiment=experiment, variant_id=params.validated_data["variant"], actor=self.actor
        )
        return Response(
            {
                "experiment": experiment_data(promotion.experiment),
                "label": promotion.label.name,
                "version": promotion.label.version.number,
                "previous_version": promotion.previous_version,
            }
        )


def _experiment_of(template: PromptTemplate, experiment_id: str) -> Experiment:
    # The route's pattern is digits only, but of any length: past bigint it can match no row.
    experiment = None
    if len(experiment_id) <= 18:
        experiment = Experiment.objects.filter(template=template, pk=int(experiment_id)).first()
    if experiment is None:
        raise NotFoundError(
            f"Prompt '{template.name}' has no experiment {experiment_id}.", param="experiment_id"
        )
    return experiment
