from __future__ import annotations

from django.conf import settings
from rest_framework import serializers

from tenants.models import ApiKey, Scope, Tenant


class TenantSerializer(serializers.ModelSerializer[Tenant]):
    class Meta:
        model = Tenant
        fields = ["id", "name", "slug", "is_active", "created_at"]


class QuotaSerializer(serializers.ModelSerializer[Tenant]):
    class Meta:
        model = Tenant
        fields = ["requests_per_minute", "tokens_per_minute", "monthly_token_quota", "allowed_models"]


class ApiKeySerializer(serializers.ModelSerializer[ApiKey]):
    id = serializers.CharField(source="public_id", read_only=True)
    prefix = serializers.CharField(source="display_key", read_only=True)
    status = serializers.CharField(read_only=True)
    rotated_from: serializers.SlugRelatedField[ApiKey] = serializers.SlugRelatedField(
        slug_field="public_id", read_only=True
    )

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "prefix",
            "name",
            "scopes",
            "requests_per_minute",
            "status",
            "created_at",
            "created_by",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "rotated_from",
        ]


class ApiKeyWithSecretSerializer(ApiKeySerializer):
    """Only in the response that creates a key: the one time the raw key is shown."""

    key = serializers.CharField(read_only=True)

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=Scope.choices), min_length=1, max_length=len(Scope.choices)
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    requests_per_minute = serializers.IntegerField(required=False, allow_null=True, min_value=1)


class ApiKeyRotateSerializer(serializers.Serializer):
    grace_seconds = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=int(settings.API_KEY_ROTATION_MAX_GRACE.total_seconds()),
        help_text="How long the old key keeps working; default API_KEY_ROTATION_GRACE_SECONDS.",
    )


class MeSerializer(serializers.Serializer):
    tenant = TenantSerializer()
    key = ApiKeySerializer()
    quotas = QuotaSerializer()
    usage = serializers.DictField(
        child=serializers.DictField(child=serializers.IntegerField()),
        allow_null=True,
        help_text="This minute's counters; null while the rate-limit store is unreachable.",
    )
