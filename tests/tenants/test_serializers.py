"""RequestSerializer: fields built once per class and shared by every request and thread."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from chat.serializers import ChatCompletionRequestSerializer


def validate(index: int) -> tuple[int, object]:
    body: dict[str, object] = {
        "model": f"model-{index}",
        "messages": [{"role": "user", "content": f"question {index}"}],
    }
    if index % 3 == 0:
        body["max_tokens"] = 0  # invalid
    serializer = ChatCompletionRequestSerializer(data=body)
    if serializer.is_valid():
        return index, (
            serializer.validated_data["model"],
            serializer.validated_data["messages"][0]["content"],
        )
    return index, serializer.errors


def test_shared_fields_give_every_thread_its_own_result():
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(validate, range(400)))
    for index, result in results:
        if index % 3 == 0:
            assert set(result) == {"max_tokens"}, result
        else:
            assert result == (f"model-{index}", f"question {index}")
    first, second = ChatCompletionRequestSerializer(data={}), ChatCompletionRequestSerializer(data={})
    assert first.fields is second.fields  # built once for the class


@pytest.mark.parametrize(
    "kwargs", [{"instance": object()}, {"context": {"request": None}}, {"partial": True}]
)
def test_per_request_state_is_refused(kwargs):
    with pytest.raises(TypeError, match="validates input"):
        ChatCompletionRequestSerializer(data={}, **kwargs)
