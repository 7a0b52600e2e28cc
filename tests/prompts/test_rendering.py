from __future__ import annotations

import pytest

from prompts.rendering import declared_variables, resolve_values, substitute, validate_model_config
from tenants.errors import DomainError


def test_values_are_inserted_once_as_text():
    values = resolve_values({"q": None}, {"q": "{{ q }} and {{ secret }}"})
    assert substitute("Q: {{ q }}", values) == "Q: {{ q }} and {{ secret }}"


def test_whitespace_inside_braces_is_optional():
    assert substitute("{{a}}-{{ a }}-{{  a  }}", {"a": "x"}) == "x-x-x"


@pytest.mark.parametrize(
    "source",
    ["{{ user.password }}", "{{ a | upper }}", "{{ __import__('os') }}", "{{ }}", "{{ a b }}", "{{ 1abc }}"],
)
def test_anything_but_an_identifier_is_refused_at_save(source):
    with pytest.raises(DomainError, match="Invalid placeholder"):
        declared_variables("text", None, source, None)


def test_variables_are_inferred_as_required_when_not_declared():
    assert declared_variables("text", None, "{{ b }} {{ a }} {{ b }}", None) == {"a": None, "b": None}


def test_placeholders_must_be_declared():
    with pytest.raises(DomainError, match="not declared in variables: b"):
        declared_variables("text", None, "{{ a }} {{ b }}", {"a": None})


def test_missing_required_variable_is_named():
    with pytest.raises(DomainError) as raised:
        resolve_values({"company": None, "tone": "friendly"}, {})
    assert raised.value.param == "variables.company"
    assert "company" in raised.value.message


def test_unknown_variable_is_refused():
    with pytest.raises(DomainError) as raised:
        resolve_values({"a": None}, {"a": "x", "typo": "y"})
    assert raised.value.param == "variables.typo"


@pytest.mark.parametrize("value", [{"nested": 1}, ["list"], None, True, float("nan")])
def test_values_must_be_scalar_text_or_numbers(value):
    with pytest.raises(DomainError):
        resolve_values({"a": None}, {"a": value})


def test_defaults_fill_in_and_numbers_become_text():
    assert resolve_values({"a": "default", "n": None}, {"n": 3}) == {"a": "default", "n": "3"}


@pytest.mark.parametrize(
    "config",
    [
        {"temperature": 3},
        {"temperature": "hot"},
        {"max_tokens": 0},
        {"max_tokens": 1.5},
        {"top_p": -1},
        {"model": ""},
        {"seed": 1},
        [],
    ],
)
def test_bad_model_config_is_refused(config):
    with pytest.raises(DomainError):
        validate_model_config(config)
