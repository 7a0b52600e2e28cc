from __future__ import annotations

import pytest

from prompts import selectors
from prompts.services import prompt_template_create


@pytest.fixture(autouse=True)
def _empty_prompt_caches() -> None:
    """Per-process snapshot caches start empty, as in a fresh worker."""
    selectors.prompt_snapshots.clear()
    selectors._versions.clear()


@pytest.fixture
def support_prompt(tenant):
    return prompt_template_create(
        tenant=tenant,
        name="support",
        kind="chat",
        actor="test",
        messages=[
            {"role": "system", "content": "You help customers of {{ company }} in a {{tone}} tone."},
            {"role": "user", "content": "{{ question }}"},
        ],
        variables={"company": None, "tone": "friendly", "question": None},
        model_config={"model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 300},
    )
