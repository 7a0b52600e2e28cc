from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.http import QueryDict
from rest_framework import serializers
from rest_framework.utils.serializer_helpers import BindingDict

from tenants.models import ApiKey, Scope

# JSON Schema patterns of what request strings may hold (the schema's `pattern`).
NO_NUL = "^[^\\x00]*$"
# What str.strip() leaves something of, as the services check "non-empty" (Python's whitespace, which is
# not JavaScript's \\s), and no NUL.
_SPACE = "\\t-\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
NON_BLANK = f"^[^\\x00]*[^\\x00{_SPACE}][^\\x00]*$"


class RequestSerializer(serializers.Serializer):
    """The base of every serializer that validates a request body or query string.

    DRF deep-copies every declared field for each serializer instance: ~0.2 ms for a dozen fields,
    most of what validating a chat request cost (a micro-benchmark: 0.3 -> 0.05 ms per request).
    Validating input keeps no state on a field, so one set of fields, built once per class, serves
    every request and thread, provided nothing per request is attached to the serializer: it takes
    `data` and nothing else (no instance, context or partial validation, which fields would read
    through their parent).

    Input is taken as the schema describes it (/api/schema/): a JSON body's values must have the
    declared JSON type (DRF would take 5 for a string, "5" for an integer, "yes" or 1 for a boolean,
    0 for a UUID), and strings are not trimmed (DRF's trimming let a string of 300 characters plus
    a U+001C pass a max_length of 300, and a blank one fail as "blank" though it has length).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Nested, it also takes field arguments (required=..., many=...) at class definition.
        if args or {"instance", "context", "partial"} & kwargs.keys():
            raise TypeError(f"{type(self).__name__} validates input: it takes data=, no instance or context")
        super().__init__(**kwargs)

    @property  # DRF's is a cached_property per instance
    def fields(self) -> BindingDict:
        cls = type(self)
        shared: BindingDict | None = cls.__dict__.get("_shared_fields")
        if shared is None:
            # Bound to an instance without data, so no request's body stays referenced by the class.
            prototype = cls()
            shared = BindingDict(prototype)
            for name, field in prototype.get_fields().items():
                untrimmed(field)
                shared[name] = field
            cls._shared_fields = shared  # type: ignore[attr-defined]  # a race only builds it twice
        return shared

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, QueryDict):
            # DRF reads an empty form or query value (`?status=`) as an omitted one, silently.
            errors = {
                name: ["This field may not be blank."]
                for name, field in self.fields.items()
                if data.get(name) == "" and not getattr(field, "allow_blank", False)
            }
        elif isinstance(data, Mapping):
            # A field may say more than the type it wants (error_messages["wrong_type"]).
            errors = {
                name: [str(field.error_messages.get("wrong_type", f"Not a valid {expected}."))]
                for name, field in self.fields.items()
                if name in data and (expected := json_type_mismatch(field, data[name]))
            }
        else:
            errors = {}
        if errors:
            raise serializers.ValidationError(errors)
        return super().to_internal_value(data)


def untrimmed(field: serializers.Field) -> None:
    if isinstance(field, serializers.CharField):
        field.trim_whitespace = False
    child = getattr(field, "child", None)  # ListField/DictField items; a nested serializer does its own
    if isinstance(child, serializers.Field) and not isinstance(child, serializers.Serializer):
        untrimmed(child)


_TEXT_FIELDS = (
    serializers.CharField,
    serializers.UUIDField,
    serializers.DateTimeField,
    serializers.DateField,
)


def json_type_mismatch(field: serializers.Field, value: Any) -> str | None:
    """The JSON type `field` takes, when `value` (from a JSON body) is not of it; None when it is."""
    if value is None or isinstance(field, serializers.Serializer | serializers.ListSerializer):
        return None  # null: the field's allow_null decides; nested serializers check their own fields
    if isinstance(field, serializers.BooleanField):
        return None if isinstance(value, bool) else "boolean"
    if isinstance(value, bool):
        is_number = False
    else:
        is_number = isinstance(value, int) or (
            isinstance(value, float) and not isinstance(field, serializers.IntegerField)
        )
    if isinstance(field, serializers.IntegerField | serializers.FloatField):
        return None if is_number else "number" if isinstance(field, serializers.FloatField) else "integer"
    if isinstance(field, _TEXT_FIELDS):
        return None if isinstance(value, str) else "string"
    child = getattr(field, "child", None)
    if isinstance(field, serializers.ListField) and isinstance(value, list) and child is not None:
        return next((m for item in value if (m := json_type_mismatch(child, item))), None)
    if isinstance(field, serializers.DictField) and isinstance(value, dict) and child is not None:
        return next((m for item in value.values() if (m := json_type_mismatch(child, item))), None)
    return None


# Output shapes are plain Serializers: ModelSerializer rebuilds its fields from model metadata on
# every instantiation, which cost ~1 ms per object on the /me path (bench/bench_api_overhead.py).
class TenantSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    slug = serializers.CharField()
    is_active = serializers.BooleanField()
    created_at = serializers.DateTimeField()


class QuotaSerializer(serializers.Serializer):
    requests_per_minute = serializers.IntegerField()
    tokens_per_minute = serializers.IntegerField()
    monthly_token_quota = serializers.IntegerField(allow_null=True, help_text="null means unlimited")
    allowed_models = serializers.ListField(child=serializers.CharField())


class ApiKeySerializer(serializers.Serializer):
    id = serializers.CharField(source="public_id")
    prefix = serializers.CharField(source="display_key", help_text="Recognisable start of the key")
    name = serializers.CharField()
    scopes = serializers.ListField(
        child=serializers.CharField(), help_text=f"Any of {', '.join(Scope.values)}"
    )
    requests_per_minute = serializers.IntegerField(allow_null=True)
    status = serializers.CharField(
        help_text="active; expiring (rotated: it works until expires_at, then is expired); expired; "
        "or revoked"
    )
    created_at = serializers.DateTimeField()
    created_by = serializers.CharField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    rotated_from = serializers.SerializerMethodField()

    def get_rotated_from(self, api_key: ApiKey) -> str | None:
        return api_key.rotated_from.public_id if api_key.rotated_from is not None else None


class ApiKeyWithSecretSerializer(ApiKeySerializer):
    """Only in the response that creates a key: the one time the raw key is shown."""

    key = serializers.CharField(read_only=True)


class ApiKeyCreateSerializer(RequestSerializer):
    name = serializers.CharField(max_length=100, help_text="Stored without surrounding whitespace")
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=Scope.choices), min_length=1, max_length=len(Scope.choices)
    )
    expires_at = serializers.DateTimeField(required=False, allow_null=True, help_text="In the future")
    requests_per_minute = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=1_000_000
    )

    # api_key_create refuses a name of only whitespace.
    schema_rules = {"properties": {"name": {"type": "string", "maxLength": 100, "pattern": NON_BLANK}}}


class ApiKeyRotateSerializer(RequestSerializer):
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


class ErrorItemSerializer(serializers.Serializer):
    param = serializers.CharField(allow_null=True, help_text="The field, dotted into nested ones")
    message = serializers.CharField()
    code = serializers.CharField(allow_null=True)


class ErrorDetailSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="invalid_request_error, authentication_error, not_found_error...")
    message = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True)

    def get_fields(self) -> dict[str, serializers.Field]:
        # `errors` would shadow Serializer.errors as a class attribute.
        return {
            **super().get_fields(),
            "errors": ErrorItemSerializer(
                many=True, required=False, help_text="Every field problem (400 only)"
            ),
        }


class ErrorSerializer(serializers.Serializer):
    """Schema of the API's one error shape (tenants/errors.py)."""

    error = ErrorDetailSerializer()
