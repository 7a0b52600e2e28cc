"""Pure parts of chat/providers.py: stop sequences applied on our side."""

from __future__ import annotations

import pytest

from chat.providers import StopCut, cut_at_stop


def test_cut_at_stop_ends_before_the_first_sequence_found():
    assert cut_at_stop("a, b. c", (".", ",")) == "a"
    assert cut_at_stop("abc", ("x",)) == "abc"
    assert cut_at_stop("abc", ()) == "abc"


@pytest.mark.parametrize(
    ("pieces", "stops", "sent", "stopped"),
    [
        (["Hello", "\n", "\nWorld"], ("\n\n",), "Hello", True),  # the sequence spans two pieces
        (["Hello\n", "World"], ("\n\n",), "Hello\nWorld", False),  # a held-back tail that was not one
        (["a", "b"], ("\n",), "ab", False),
        (["one two", " three"], (" ",), "one", True),
    ],
)
def test_a_streamed_text_ends_before_its_stop_sequence(pieces, stops, sent, stopped):
    cut = StopCut(stops)
    out = ""
    for piece in pieces:
        out += cut.feed(piece)
        if cut.stopped:
            break
    if not cut.stopped:
        out += cut.flush()
    assert (out, cut.stopped) == (sent, stopped)
