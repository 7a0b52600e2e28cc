from __future__ import annotations

import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from prompts.models import PromptTemplate, TemplateKind
from prompts.rendering import IDENTIFIER, ROLES
from prompts.selectors import RenderedPrompt, running_experiment
from tenants.serializers import NO_NUL, NON_BLANK, RequestSerializer

# What prompts.rendering refuses, for the schema (the template language itself is checked there).
MODEL_CONFIG_SCHEMA = {
    "type": "object",
    "nullable": True,
    "additionalProperties": False,
    "properties": {
        "model": {"type": "string", "nullable": True, "pattern": NON_BLANK},
        "temperature": {"type": "number", "nullable": True, "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "nullable": True, "minimum": 0, "maximum": 1},
        "max_tokens": {"type": "integer", "nullable": True, "minimum": 1, "maximum": 1_000_000},
    },
}
# (No `enum` in these: spectacular would turn each into a shared component of one name.)
# Names must be identifiers (IDENTIFIER), which OpenAPI 3.0 cannot say of property names.
VARIABLES_SCHEMA = {
    "type": "object",
    "nullable": True,
    "additionalProperties": {"type": "string", "nullable": True, "pattern": NO_NUL},
    "description": f"{{name: default or null for required}}; names match {IDENTIFIER.pattern}",
}
CONTENT_RULES = {
    "properties": {"model_config": MODEL_CONFIG_SCHEMA, "variables": VARIABLES_SCHEMA},
    "oneOf": [
        {  # chat: a non-empty list of messages, no text (null passes)
            "properties": {"kind": {"pattern": "^chat$"}, "messages": {"type": "array", "minItems": 1}},
            "required": ["messages"],
            "not": {"properties": {"text": {"type": "string"}}, "required": ["text"]},
        },
        {  # text: a non-blank text, no messages (null passes)
            "properties": {"kind": {"pattern": "^text$"}, "text": {"type": "string", "pattern": NON_BLANK}},
            "required": ["text"],
            "not": {"properties": {"messages": {"type": "array"}}, "required": ["messages"]},
        },
    ],
}

if TYPE_CHECKING:
    from monitoring.experiments import VariantResult


class MessageSerializer(RequestSerializer):
    role = serializers.ChoiceField(choices=ROLES)
    content = serializers.CharField(trim_whitespace=False)


class VersionContentSerializer(RequestSerializer):
    """The body of a new version; the content rules themselves live in prompts.rendering."""

    messages = MessageSerializer(many=True, required=False, allow_null=True)
    text = serializers.CharField(required=False, allow_null=True, trim_whitespace=False)
    variables = serializers.DictField(
        child=serializers.CharField(allow_null=True, allow_blank=True, trim_whitespace=False),
        required=False,
        allow_null=True,
        help_text='{"name": default or null for required}; omitted: inferred from placeholders, all required',
    )
    model_config = serializers.DictField(
        required=False, allow_null=True, help_text="model, temperature, max_tokens, top_p"
    )


class PromptCreateSerializer(VersionContentSerializer):
    name = serializers.SlugField(max_length=100)
    kind = serializers.ChoiceField(choices=TemplateKind.choices)
    description = serializers.CharField(required=False, allow_blank=True, default="")

    schema_rules = CONTENT_RULES


class PromptVersionCreateSerializer(VersionContentSerializer):
    message = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)

    # messages or text as the prompt's kind takes, which the body does not say
    schema_rules = {"properties": {"model_config": MODEL_CONFIG_SCHEMA, "variables": VARIABLES_SCHEMA}}


class LabelMoveSerializer(RequestSerializer):
    version = serializers.IntegerField(min_value=1)


class RenderSerializer(RequestSerializer):
    label = serializers.SlugField(required=False, max_length=50)  # type: ignore[assignment]  # shadows Field.label
    version = serializers.IntegerField(required=False, min_value=1)
    variables = serializers.DictField(required=False, default=dict)
    user = serializers.CharField(
        required=False, max_length=200, help_text="End-user id for sticky A/B assignment"
    )

    schema_rules = {"not": {"required": ["label", "version"]}}  # validate(), for the schema

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "label" in attrs and "version" in attrs:
            raise serializers.ValidationError({"version": "Give either label or version, not both."})
        return attrs


class VariantInputSerializer(RequestSerializer):
    version = serializers.IntegerField(min_value=1)
    weight = serializers.IntegerField(min_value=0, max_value=100)


class ExperimentCreateSerializer(RequestSerializer):
    name = serializers.CharField(required=False, allow_blank=True, default="", max_length=100)
    variants = VariantInputSerializer(many=True, allow_empty=False)


def version_data(version: Any) -> dict[str, Any]:
    return {
        "number": version.number,
        "messages": version.messages,
        "text": version.text,
        "variables": version.variables,
        "model_config": version.model_config,
        "message": version.message,
        "author": version.author,
        "created_at": version.created_at,
    }


def experiment_data(experiment: Any) -> dict[str, Any] | None:
    if experiment is None:
        return None
    return {
        "id": experiment.pk,
        "name": experiment.name,
        "status": experiment.status,
        "started_at": experiment.started_at,
        "stopped_at": experiment.stopped_at,
        "variants": [
            {"id": v.pk, "version": v.version.number, "weight": v.weight} for v in experiment.variants.all()
        ],
    }


def template_summary(template: PromptTemplate) -> dict[str, Any]:
    return {
        "name": template.name,
        "owner": "global" if template.tenant_id is None else "tenant",
        "kind": template.kind,
        "description": template.description,
        "labels": {label.name: label.version.number for label in template.labels.all()},
        "latest_version": max((v.number for v in template.versions.all()), default=None),
    }


def template_detail(template: PromptTemplate) -> dict[str, Any]:
    return {
        **template_summary(template),
        "versions": [version_data(version) for version in template.versions.all()],
        "running_experiment": experiment_data(running_experiment(template=template)),
    }


def rendered_data(rendered: RenderedPrompt) -> dict[str, Any]:
    resolved = rendered.resolved
    body: dict[str, Any] = {"prompt": resolved.name}
    if rendered.messages is not None:
        body["messages"] = rendered.messages
    else:
        body["text"] = rendered.text
    body.update(
        {
            "version": resolved.version.number,
            "variant": resolved.variant_id,
            "experiment": resolved.experiment_id,
            "model_config": resolved.version.model_config,
        }
    )
    return body


@extend_schema_serializer(many=False)
class PromptListSerializer(serializers.Serializer):
    results = serializers.ListField(child=serializers.DictField(), help_text="PromptSummary items")


class PromptSummarySerializer(serializers.Serializer):
    """Schema of the list items (built by template_summary)."""

    name = serializers.CharField()
    owner = serializers.ChoiceField(choices=["global", "tenant"])
    kind = serializers.ChoiceField(choices=TemplateKind.choices)
    description = serializers.CharField()
    labels = serializers.DictField(child=serializers.IntegerField())
    latest_version = serializers.IntegerField()


class RenderResultSerializer(serializers.Serializer):
    prompt = serializers.CharField()
    messages = MessageSerializer(many=True, required=False)
    text = serializers.CharField(required=False)
    version = serializers.IntegerField()
    variant = serializers.IntegerField(allow_null=True)
    experiment = serializers.IntegerField(allow_null=True)
    model_config = serializers.DictField()


# --- experiment results and promote ---------------------------------------------------------------


class PromoteSerializer(RequestSerializer):
    variant = serializers.IntegerField(
        min_value=1, max_value=2**63 - 1, help_text="The id of one of the experiment's variants"
    )


class EstimateSerializer(serializers.Serializer):
    value = serializers.FloatField(allow_null=True)
    low = serializers.FloatField(allow_null=True, help_text="95% confidence interval; null if unknown")
    high = serializers.FloatField(allow_null=True)


class FeedbackResultSerializer(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.CharField(help_text="thumbs or scale")
    count = serializers.IntegerField()
    positive = serializers.IntegerField(allow_null=True, help_text="Thumbs only: scores above 0")
    positive_rate = EstimateSerializer(allow_null=True, help_text="Thumbs only; Wilson interval")
    mean_score = EstimateSerializer(help_text="Student t interval")


class ComparisonSerializer(serializers.Serializer):
    metric = serializers.CharField(help_text="A feedback name, 'error rate', 'latency' or 'cost per request'")
    test = serializers.ChoiceField(choices=["two_proportion_z", "welch_t"])
    n_variant = serializers.IntegerField()
    n_control = serializers.IntegerField()
    variant_value = serializers.FloatField(allow_null=True)
    control_value = serializers.FloatField(allow_null=True)
    difference = EstimateSerializer(help_text="Variant minus control, with its 95% interval")
    statistic = serializers.FloatField(allow_null=True, help_text="z or t")
    p_value = serializers.FloatField(allow_null=True)
    significant = serializers.BooleanField(
        allow_null=True, help_text="p < 0.05; null below the minimum sample (no verdict)"
    )
    verdict = serializers.CharField()


class PercentilesSerializer(serializers.Serializer):
    p50 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)


class VariantResultSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    version = serializers.IntegerField()
    weight = serializers.IntegerField()
    is_control = serializers.BooleanField()
    requests = serializers.IntegerField()
    end_users = serializers.IntegerField()
    errors = serializers.IntegerField()  # type: ignore[assignment]  # shadows Serializer.errors
    refusals = serializers.IntegerField()
    error_rate = EstimateSerializer()
    refusal_rate = EstimateSerializer()
    latency_ms = PercentilesSerializer(help_text="Successful requests")
    latency_mean_ms = EstimateSerializer()
    time_to_first_token_ms = PercentilesSerializer(help_text="Successful streamed requests")
    input_tokens_mean = serializers.FloatField(allow_null=True)
    output_tokens_mean = serializers.FloatField(allow_null=True)
    cost_per_request_usd = EstimateSerializer()
    feedback = FeedbackResultSerializer(many=True)
    comparisons = ComparisonSerializer(many=True, help_text="Against the control; empty for the control")


class ExperimentResultsSerializer(serializers.Serializer):
    experiment = serializers.DictField(help_text="id, name, status, started_at, stopped_at, variants")
    control = serializers.IntegerField(allow_null=True, help_text="Variant id of the control")
    min_sample = serializers.IntegerField(help_text="Observations per variant before any verdict")
    variants = VariantResultSerializer(many=True)


class PromoteResultSerializer(serializers.Serializer):
    experiment = serializers.DictField()
    label = serializers.CharField()  # type: ignore[assignment]  # shadows Field.label
    version = serializers.IntegerField()
    previous_version = serializers.IntegerField(allow_null=True)


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: an undefined statistic is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def experiment_results_data(experiment: Any, results: list[VariantResult]) -> dict[str, Any]:
    from monitoring.experiments import MIN_SAMPLE

    variants = {variant.pk: variant for variant in experiment.variants.select_related("version")}
    rows = []
    for result in results:
        variant = variants[result.ref.id]
        rows.append(
            {
                "id": variant.pk,
                "version": variant.version.number,
                "weight": variant.weight,
                "is_control": result.is_control,
                "requests": result.requests,
                "end_users": result.end_users,
                "errors": result.errors,
                "refusals": result.refusals,
                "error_rate": asdict(result.error_rate),
                "refusal_rate": asdict(result.refusal_rate),
                "latency_ms": {"p50": result.latency_p50, "p95": result.latency_p95},
                "latency_mean_ms": asdict(result.latency),
                "time_to_first_token_ms": {"p50": result.ttft_p50, "p95": result.ttft_p95},
                "input_tokens_mean": result.input_tokens_mean,
                "output_tokens_mean": result.output_tokens_mean,
                "cost_per_request_usd": asdict(result.cost_usd),
                "feedback": [
                    {key: value for key, value in asdict(metric).items() if key != "score_variance"}
                    for metric in result.feedback
                ],
                "comparisons": [asdict(comparison) for comparison in result.comparisons],
            }
        )
    return _finite(
        {
            "experiment": experiment_data(experiment),
            "control": next((r.ref.id for r in results if r.is_control), None),
            "min_sample": MIN_SAMPLE,
            "variants": rows,
        }
    )
