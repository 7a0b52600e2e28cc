"""Request and response shapes of the feedback and trace endpoints."""

from __future__ import annotations

import math
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.documents import format_usd
from monitoring.models import RefusalReason, Trace, TraceStatus
from tenants.serializers import RequestSerializer


class FiniteFloatField(serializers.FloatField):
    def to_internal_value(self, data: Any) -> float:
        value = super().to_internal_value(data)
        if not math.isfinite(value):
            raise serializers.ValidationError("Must be a finite number.", code="invalid")
        return value


class FeedbackCreateSerializer(RequestSerializer):
    trace_id = serializers.CharField(
        max_length=200,
        help_text="The trace's id (`trace_id` of /api/v1/chat, `x_trace_id` of a completion), the request "
        "id (/api/v1/chat's `id`) or a completion's `id` (chatcmpl-...).",
    )
    name = serializers.SlugField(
        max_length=64,
        default="rating",
        help_text="The metric; undeclared names (and the default, rating) are thumbs: -1 or 1.",
    )
    score = FiniteFloatField(help_text="-1 or 1 for thumbs; within the declared bounds for a scale.")
    comment = serializers.CharField(
        max_length=4000, required=False, allow_blank=True, help_text="Left out, an earlier comment stays."
    )
    user = serializers.CharField(
        max_length=200, required=False, allow_blank=True, help_text="The end user; defaults to the trace's."
    )


class FeedbackSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    trace_id = serializers.UUIDField()
    name = serializers.CharField()
    score = serializers.FloatField()
    comment = serializers.CharField()
    user = serializers.CharField(source="end_user")
    prompt_name = serializers.CharField()
    prompt_version = serializers.IntegerField(allow_null=True)
    prompt_variant = serializers.IntegerField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class TimeRangeQuerySerializer(RequestSerializer):
    created_after = serializers.DateTimeField(required=False, help_text="Created at or after (ISO 8601).")
    created_before = serializers.DateTimeField(required=False, help_text="Created before (ISO 8601).")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        after, before = attrs.get("created_after"), attrs.get("created_before")
        if after is not None and before is not None and after >= before:
            raise serializers.ValidationError({"created_before": "Must be later than created_after."})
        return attrs


class FeedbackListQuerySerializer(TimeRangeQuerySerializer):
    trace = serializers.UUIDField(required=False, help_text="The trace's id.")
    name = serializers.SlugField(max_length=64, required=False)
    user = serializers.CharField(max_length=200, required=False, allow_blank=True)
    score = FiniteFloatField(required=False)


class TraceListQuerySerializer(TimeRangeQuerySerializer):
    status = serializers.ChoiceField(choices=TraceStatus.choices, required=False)
    refusal_reason = serializers.ChoiceField(choices=RefusalReason.choices, required=False)
    model = serializers.CharField(max_length=100, required=False)
    provider = serializers.CharField(max_length=32, required=False)
    endpoint = serializers.CharField(max_length=50, required=False)
    prompt = serializers.CharField(max_length=100, required=False, help_text="The prompt's name.")
    prompt_version = serializers.IntegerField(min_value=1, max_value=2**31 - 1, required=False)
    prompt_variant = serializers.IntegerField(min_value=-(2**63), max_value=2**63 - 1, required=False)
    user = serializers.CharField(max_length=200, required=False, allow_blank=True, help_text="The end user.")
    conversation = serializers.UUIDField(required=False, help_text="The conversation's id.")
    cached = serializers.BooleanField(required=False, allow_null=True, default=None)


class TraceSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    request_id = serializers.CharField()
    endpoint = serializers.CharField()
    status = serializers.ChoiceField(choices=TraceStatus.choices)
    refusal_reason = serializers.SerializerMethodField()
    error = serializers.CharField()
    provider = serializers.CharField()
    model = serializers.CharField()
    prompt_name = serializers.CharField()
    prompt_version = serializers.IntegerField(allow_null=True)
    prompt_variant = serializers.IntegerField(allow_null=True)
    user = serializers.CharField(source="end_user")
    conversation_id = serializers.UUIDField(allow_null=True)
    cached = serializers.BooleanField()
    streamed = serializers.BooleanField()
    input_tokens = serializers.IntegerField()
    cached_input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.SerializerMethodField()
    latency_ms = serializers.FloatField()
    time_to_first_token_ms = serializers.FloatField(allow_null=True)
    attempts = serializers.IntegerField()
    created_at = serializers.DateTimeField()

    @extend_schema_field(serializers.ChoiceField(choices=RefusalReason.choices, allow_null=True))
    def get_refusal_reason(self, trace: Trace) -> str | None:
        return trace.refusal_reason or None

    @extend_schema_field(serializers.CharField(help_text="Exact, e.g. 0.0005328"))
    def get_cost_usd(self, trace: Trace) -> str:
        return format_usd(trace.cost_nanos)


class SpanSerializer(serializers.Serializer):
    name = serializers.CharField()
    status = serializers.CharField()
    start_ms = serializers.FloatField()
    duration_ms = serializers.FloatField()
    attributes = serializers.DictField()


class TraceTextSerializer(serializers.Serializer):
    text = serializers.CharField(allow_null=True, help_text="null when the tenant keeps no trace text.")
    bytes = serializers.IntegerField(allow_null=True, help_text="UTF-8 size; null when not recorded.")
    sha256 = serializers.CharField(allow_null=True)


def trace_text(text: str, size: int | None, sha256: str) -> dict[str, Any]:
    return {
        # An empty text with a size was not kept (the tenant's privacy setting).
        "text": text if text or not size else None,
        "bytes": size,
        "sha256": sha256 or None,
    }


class TraceDetailSerializer(TraceSerializer):
    request = serializers.SerializerMethodField()
    answer = serializers.SerializerMethodField()
    spans = SpanSerializer(many=True)
    feedback = FeedbackSerializer(many=True)

    @extend_schema_field(TraceTextSerializer)
    def get_request(self, trace: Trace) -> dict[str, Any]:
        return trace_text(trace.request_text, trace.request_bytes, trace.request_sha256)

    @extend_schema_field(TraceTextSerializer)
    def get_answer(self, trace: Trace) -> dict[str, Any]:
        return trace_text(trace.answer_text, trace.answer_bytes, trace.answer_sha256)
