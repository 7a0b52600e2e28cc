"""The strict, logic-less template language: `{{ name }}` placeholders and nothing else.

No expressions, attribute access, filters or code: anything between `{{` and `}}` that is not a
bare identifier is refused when the version is saved. Rendering is one pass of substitution, so a
value containing `{{ x }}` is inserted as text and never rendered again.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from tenants.errors import DomainError

PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.S)
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
ROLES = ("system", "user", "assistant")
MODEL_CONFIG_KEYS = {"model", "temperature", "max_tokens", "top_p"}
MAX_VALUE_CHARS = 100_000


def placeholders(source: str, *, param: str) -> list[str]:
    names = []
    for match in PLACEHOLDER.finditer(source):
        name = match.group(1).strip()
        if not IDENTIFIER.match(name):
            raise DomainError(
                f"Invalid placeholder {match.group(0)!r}: only {{{{ name }}}} with an identifier is allowed.",
                param=param,
            )
        names.append(name)
    return names


def _sources(kind: str, messages: list[dict[str, str]] | None, text: str | None) -> list[tuple[str, str]]:
    if kind == "chat":
        return [
            (f"messages.{index}.content", message["content"]) for index, message in enumerate(messages or [])
        ]
    return [("text", text or "")]


def validate_content(kind: str, messages: Any, text: Any) -> None:
    if kind == "chat":
        if text is not None:
            raise DomainError("Chat templates take 'messages', not 'text'.", param="text")
        if not isinstance(messages, list) or not messages:
            raise DomainError("Chat templates need a non-empty list of messages.", param="messages")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or set(message) != {"role", "content"}:
                raise DomainError('Each message is {"role", "content"}.', param=f"messages.{index}")
            if message["role"] not in ROLES:
                raise DomainError(f"role must be one of {', '.join(ROLES)}.", param=f"messages.{index}.role")
            if not isinstance(message["content"], str) or not message["content"].strip():
                raise DomainError("content must be a non-empty string.", param=f"messages.{index}.content")
    elif kind == "text":
        if messages is not None:
            raise DomainError("Text templates take 'text', not 'messages'.", param="messages")
        if not isinstance(text, str) or not text.strip():
            raise DomainError("Text templates need a non-empty 'text'.", param="text")
    else:
        raise DomainError("kind must be 'chat' or 'text'.", param="kind")


def declared_variables(kind: str, messages: Any, text: Any, variables: Any) -> dict[str, str | None]:
    """The variables of a new version: as declared, or inferred (all required) when not given.

    Every placeholder must be declared; a declared variable maps to its default or None (required).
    """
    used = {
        name for param, source in _sources(kind, messages, text) for name in placeholders(source, param=param)
    }
    if variables is None:
        return dict.fromkeys(sorted(used))
    if not isinstance(variables, dict):
        raise DomainError('variables must be an object: {"name": default or null}.', param="variables")
    for name, default in variables.items():
        if not IDENTIFIER.match(name):
            raise DomainError(f"Variable name {name!r} is not an identifier.", param="variables")
        if default is not None and not isinstance(default, str):
            raise DomainError(f"Default of '{name}' must be a string or null.", param=f"variables.{name}")
    undeclared = sorted(used - set(variables))
    if undeclared:
        raise DomainError(
            f"Placeholders not declared in variables: {', '.join(undeclared)}.", param="variables"
        )
    return dict(variables)


def validate_model_config(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise DomainError("model_config must be an object.", param="model_config")
    if "\\u0000" in json.dumps(config):  # PostgreSQL cannot store NUL in jsonb or text
        raise DomainError("model_config must not contain NUL characters.", param="model_config")
    unknown = sorted(set(config) - MODEL_CONFIG_KEYS)
    if unknown:
        raise DomainError(f"Unknown model_config keys: {', '.join(unknown)}.", param="model_config")
    # key: (lowest, highest, must be an integer)
    ranges = {"temperature": (0, 2, False), "top_p": (0, 1, False), "max_tokens": (1, 1_000_000, True)}
    for key, (low, high, integer) in ranges.items():
        value = config.get(key)
        if value is None:
            continue
        if not _number_between(value, low, high, integer=integer):
            raise DomainError(
                f"{key} must be a number between {low} and {high}.", param=f"model_config.{key}"
            )
    model = config.get("model")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise DomainError("model must be a non-empty string.", param="model_config.model")
    return dict(config)


def _number_between(value: Any, low: float, high: float, *, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        return False
    return bool(low <= value <= high)


def _value_text(name: str, value: Any) -> str:
    if isinstance(value, bool) or value is None or not isinstance(value, str | int | float):
        raise DomainError(f"Variable '{name}' must be a string or a number.", param=f"variables.{name}")
    if isinstance(value, float) and not math.isfinite(value):
        raise DomainError(f"Variable '{name}' must be a finite number.", param=f"variables.{name}")
    text = str(value)
    if "\x00" in text:
        raise DomainError(f"Variable '{name}' must not contain NUL characters.", param=f"variables.{name}")
    if len(text) > MAX_VALUE_CHARS:
        raise DomainError(
            f"Variable '{name}' is longer than {MAX_VALUE_CHARS} characters.", param=f"variables.{name}"
        )
    return text


def resolve_values(declared: dict[str, str | None], values: Any) -> dict[str, str]:
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise DomainError("variables must be an object.", param="variables")
    unknown = sorted(set(values) - set(declared))
    if unknown:
        raise DomainError(
            f"Unknown variable(s): {', '.join(unknown)}. Declared: {', '.join(declared) or 'none'}.",
            param=f"variables.{unknown[0]}",
        )
    missing = sorted(name for name, default in declared.items() if default is None and name not in values)
    if missing:
        raise DomainError(
            f"Missing required variable(s): {', '.join(missing)}.", param=f"variables.{missing[0]}"
        )
    resolved: dict[str, str] = {name: default for name, default in declared.items() if default is not None}
    resolved.update({name: _value_text(name, value) for name, value in values.items()})
    return resolved


def substitute(source: str, values: dict[str, str]) -> str:
    """One pass: each placeholder becomes its value's text; values are never scanned again."""
    return PLACEHOLDER.sub(lambda match: values[match.group(1).strip()], source)
