"""Token estimates, for worst-case reservations, history trimming and cut streams.

About four characters per token for English text with the GPT and Claude tokenizers; we use it
only where the provider does not report exact usage.
"""

from __future__ import annotations

import math

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # role and separators


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def estimate_message_tokens(messages: list[dict[str, str]]) -> int:
    return sum(estimate_tokens(message["content"]) + TOKENS_PER_MESSAGE for message in messages) + 2
