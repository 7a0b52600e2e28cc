from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tenants.serializers import NO_NUL, RequestSerializer

PROMPT_IS_A_NAME = (
    "prompt is a prompt template's name (letters, digits, - and _); label, version and variables are "
    "fields beside it, not inside it."
)


class ChatRequestSerializer(RequestSerializer):
    message = serializers.CharField(trim_whitespace=False)
    conversation_id = serializers.UUIDField(required=False)
    prompt = serializers.SlugField(
        required=False,
        max_length=100,
        help_text="A prompt template's name; label, version and variables are fields beside it.",
        error_messages={
            "invalid": PROMPT_IS_A_NAME,
            "wrong_type": PROMPT_IS_A_NAME,
        },
    )
    label = serializers.SlugField(required=False, max_length=50)  # type: ignore[assignment]  # shadows Field.label
    version = serializers.IntegerField(required=False, min_value=1)
    variables = serializers.DictField(required=False, default=dict)
    user = serializers.CharField(required=False, default="", allow_blank=True, max_length=200)
    model = serializers.CharField(
        required=False, max_length=120, help_text="One of GET /v1/models (priced, allowed to the tenant)"
    )
    max_tokens = serializers.IntegerField(
        required=False, min_value=1, max_value=settings.CHAT_MAX_TOKENS_LIMIT
    )
    temperature = serializers.FloatField(required=False, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, min_value=0, max_value=1)
    stream = serializers.BooleanField(required=False, default=False)
    rag = serializers.BooleanField(
        required=False,
        allow_null=True,
        default=None,
        help_text="Answer from the tenant's documents, with citations. Default: on when the tenant has "
        "documents (and its chat settings allow it).",
    )
    idempotency_key = serializers.CharField(required=False, max_length=200)

    # validate() below, for the schema: label or version, not both; either needs a prompt, and so do
    # variables unless empty.
    schema_rules = {
        "not": {"required": ["label", "version"]},
        "anyOf": [
            {"required": ["prompt"]},
            {
                "properties": {"variables": {"maxProperties": 0}},
                "not": {"anyOf": [{"required": ["label"]}, {"required": ["version"]}]},
            },
        ],
    }

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "label" in attrs and "version" in attrs:
            raise serializers.ValidationError({"version": "Give either label or version, not both."})
        if ("label" in attrs or "version" in attrs or attrs.get("variables")) and "prompt" not in attrs:
            raise serializers.ValidationError({"prompt": "label, version and variables need a prompt name."})
        return attrs


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "pattern": NO_NUL},
            {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"type": {"enum": ["text"]}, "text": {"type": "string", "pattern": NO_NUL}},
                    "required": ["type", "text"],
                },
            },
        ]
    }
)
class MessageContentField(serializers.JSONField):
    """A string, or a list of text parts."""


class OpenAIMessageSerializer(RequestSerializer):
    role = serializers.ChoiceField(choices=["system", "developer", "user", "assistant"])
    content = MessageContentField()

    def validate_content(self, value: Any) -> str:
        """A string, or a list of text parts ([{"type": "text", "text": ...}]); other parts are refused."""
        if isinstance(value, list) and all(
            isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            for part in value
        ):
            value = "".join(part["text"] for part in value)
        if not isinstance(value, str):
            raise serializers.ValidationError("content must be a string or a list of text parts.")
        if "\x00" in value:
            raise serializers.ValidationError("content must not contain NUL characters.")
        return value


class StreamOptionsSerializer(RequestSerializer):
    include_usage = serializers.BooleanField(required=False, default=False)


# OpenAI's parameters this gateway does not implement, refused (400) rather than dropped: dropped, a
# client asking for a tool call, JSON mode or log probabilities would take plain text for them.
# A value asking for nothing passes (null, false, an empty list, {"type": "text"}, ["text"], "none").
# Other sampling parameters (seed, presence_penalty...) only shade the answer, and are ignored.
UNSUPPORTED_PARAMETERS = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "response_format",
    "logprobs",
    "top_logprobs",
    "audio",
    "modalities",
    "prediction",
    "web_search_options",
)
_ASKING_FOR_NOTHING: dict[str, list[Any]] = {
    "response_format": [{"type": "text"}],
    "modalities": [["text"]],
    "tool_choice": ["none"],
    "function_call": ["none"],
    "parallel_tool_calls": [True],
}


# An empty object asks for something here: `web_search_options: {}` turns web search on.
_EMPTY_OBJECT_ASKS = frozenset({"web_search_options"})


def unsupported_parameter(data: Any) -> str | None:
    """The first parameter of UNSUPPORTED_PARAMETERS that `data` asks something of, or None."""
    for name in UNSUPPORTED_PARAMETERS:
        value = data.get(name)
        if value == {} and name in _EMPTY_OBJECT_ASKS:
            return name
        if value in (None, False, [], {}, "") or value in _ASKING_FOR_NOTHING.get(name, []):
            continue
        return name
    return None


MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_STOP_SEQUENCE_CHARS = 200
_STOP_SEQUENCE = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_SEQUENCE_CHARS, "pattern": NO_NUL}


@extend_schema_field(
    {
        "oneOf": [_STOP_SEQUENCE, {"type": "array", "items": _STOP_SEQUENCE, "maxItems": MAX_STOP_SEQUENCES}],
        "nullable": True,
    }
)
class StopField(serializers.JSONField):
    """null, a string, or a list of strings (validate_stop)."""


class ChatCompletionRequestSerializer(RequestSerializer):
    """The subset of OpenAI's chat completions request this gateway serves."""

    model = serializers.CharField(
        max_length=120, help_text="One of GET /v1/models (priced, allowed to the tenant)"
    )
    messages = OpenAIMessageSerializer(many=True, allow_empty=False)
    stream = serializers.BooleanField(required=False, default=False)
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)
    max_tokens = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=settings.CHAT_MAX_TOKENS_LIMIT
    )
    max_completion_tokens = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=settings.CHAT_MAX_TOKENS_LIMIT
    )
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=2)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    user = serializers.CharField(required=False, allow_blank=True, max_length=200, default="")
    stop = StopField(
        required=False, allow_null=True, default=None, help_text="1 to 4 strings: the answer ends before one."
    )
    n = serializers.IntegerField(required=False, min_value=1, max_value=1, help_text="Only 1 is supported.")
    rag = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Ours (openai SDK: extra_body={'rag': True}): answer from the tenant's documents; the "
        "completion then carries `citations`.",
    )

    def validate_stop(self, value: Any) -> tuple[str, ...]:
        """null, a string, or a list of up to 4 strings; a tuple once validated."""
        sequences = [] if value is None else [value] if isinstance(value, str) else value
        if not isinstance(sequences, list) or not all(isinstance(item, str) for item in sequences):
            raise serializers.ValidationError("stop must be a string or a list of strings.")
        if len(sequences) > MAX_STOP_SEQUENCES:
            raise serializers.ValidationError(f"stop takes at most {MAX_STOP_SEQUENCES} sequences.")
        for item in sequences:
            if not 0 < len(item) <= MAX_STOP_SEQUENCE_CHARS or "\x00" in item:
                raise serializers.ValidationError(
                    f"each stop sequence must be 1 to {MAX_STOP_SEQUENCE_CHARS} characters, without NUL."
                )
        return tuple(dict.fromkeys(sequences))

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        name = unsupported_parameter(self.initial_data)
        if name is not None:
            raise serializers.ValidationError({name: f"{name} is not supported by this gateway."})
        return attrs


class DocumentJSONUploadSerializer(RequestSerializer):
    """POST /api/v1/documents as JSON (a file goes as multipart/form-data instead)."""

    # The upload refuses an empty document: text of nothing but ASCII whitespace (chat.documents).
    schema_rules = {
        "properties": {"text": {"type": "string", "pattern": "^[^\\x00]*[^\\x00\\t-\\r ][^\\x00]*$"}}
    }

    title = serializers.CharField(required=False, default="", allow_blank=True, max_length=300)
    text = serializers.CharField(trim_whitespace=False, allow_blank=True)
    content_type = serializers.ChoiceField(
        choices=["text/plain", "text/markdown", "text/html"], required=False, default="text/plain"
    )


class DocumentMultipartUploadSerializer(RequestSerializer):
    file = serializers.FileField(allow_empty_file=True)
    title = serializers.CharField(required=False, default="", allow_blank=True, max_length=300)


class DocumentListQuerySerializer(RequestSerializer):
    status = serializers.ChoiceField(
        choices=["pending", "processing", "ready", "failed"], required=False, help_text="Only these."
    )


class DocumentSearchSerializer(RequestSerializer):
    query = serializers.CharField(max_length=4000)
    k = serializers.IntegerField(required=False, default=5, min_value=1, max_value=50)


# --- response shapes, for the schema (the views build them as dicts) ----------------------------------


class DocumentProgressSerializer(serializers.Serializer):
    chunks_embedded = serializers.IntegerField()
    chunks_total = serializers.IntegerField()
    fraction = serializers.FloatField(help_text="0 to 1")


class DocumentSerializer(serializers.Serializer):
    """Schema of chat.api.document_data."""

    id = serializers.UUIDField()
    title = serializers.CharField()
    source_filename = serializers.CharField(help_text="Empty for a JSON upload")
    content_type = serializers.CharField()
    size_bytes = serializers.IntegerField()
    sha256 = serializers.CharField()
    status = serializers.ChoiceField(choices=["pending", "processing", "ready", "failed"])
    error = serializers.CharField(allow_null=True)
    chunk_count = serializers.IntegerField()
    progress = DocumentProgressSerializer()
    embedder = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    ingested_at = serializers.DateTimeField(allow_null=True)


class DocumentUploadedSerializer(DocumentSerializer):
    duplicate = serializers.BooleanField(help_text="An earlier document of identical content, answered 200")


class ConversationSummarySerializer(serializers.Serializer):
    """Schema of ConversationViewSet._summary."""

    id = serializers.UUIDField()
    title = serializers.CharField()
    user = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    message_count = serializers.IntegerField(allow_null=True)


class ConversationMessageSerializer(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField()
    created_at = serializers.DateTimeField()


class ConversationSerializer(ConversationSummarySerializer):
    messages = ConversationMessageSerializer(many=True)
