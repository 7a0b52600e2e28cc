"""The streaming redactor: the same output as redacting the whole answer, however the provider cuts
it into deltas, without holding back more than what may still become a match."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from chat.guards import LONGEST_NUMBER, StreamRedactor, redact

ALL = ["secret", "card", "email", "phone"]
PIECES = [
    "Paris",
    "is",
    "the",
    "capital.",
    "abc123",
    "415",
    "555",
    "0100",
    "+1",
    "(415)",
    "555-0100",
    "4111",
    "1111",
    "jane.doe@example.com",
    "sk-proj-abcdefghijklmnopqrstuvwx",
    "card:",
    "call",
]


def streamed(deltas: list[str], categories: list[str]) -> str:
    redactor = StreamRedactor(categories)
    return "".join(redactor.feed(delta) for delta in deltas) + redactor.flush()


@hypothesis_settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=40),
    st.lists(st.sampled_from([" ", "  ", "\n", ", "]), min_size=40, max_size=40),
    st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=200),
)
@example(["call", "+1", "415", "555", "0100", "now"], [" "] * 40, [2])
@example(["card:", "4111", "1111", "1111", "1111", "ok"], [" "] * 40, [3, 1, 4])
def test_streaming_redaction_equals_redacting_the_whole_text(words, separators, cuts):
    text = "".join(word + separator for word, separator in zip(words, separators, strict=False))
    deltas, position = [], 0
    for size in cuts:
        if position >= len(text):
            break
        deltas.append(text[position : position + size])
        position += size
    deltas.append(text[position:])
    assert streamed(deltas, ALL) == redact(text, ALL)[0]


def test_a_word_goes_out_as_soon_as_the_next_one_starts():
    redactor = StreamRedactor(ALL)
    assert redactor.feed("Paris") == ""  # it might still become an e-mail address or a key
    assert redactor.feed(" is") == "Paris "
    assert redactor.feed(" the capital") == "is the "
    assert redactor.flush() == "capital"


def test_a_number_arriving_in_groups_is_held_until_it_ends():
    redactor = StreamRedactor(ALL)
    out = [redactor.feed(delta) for delta in ["Card ", "4111 ", "1111 ", "1111 ", "1111", " thanks", "!"]]
    assert out[:5] == ["Card ", "", "", "", ""]
    assert "".join(out) + redactor.flush() == "Card [REDACTED:card] thanks!"


def test_a_long_run_of_numbers_is_not_held_back_whole():
    redactor = StreamRedactor(ALL)
    sent = "".join(redactor.feed(f"{index % 90 + 10} ") for index in range(2000))
    assert len(redactor.buffer) < 2 * LONGEST_NUMBER
    assert sent + redactor.flush() == redact("".join(f"{i % 90 + 10} " for i in range(2000)), ALL)[0]
