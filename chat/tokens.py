"""Token estimates (history trimming, rate limits, cut streams) and the upper bound a budget
reservation holds.

About four characters per token for English text with the GPT and Claude tokenizers; we use the
estimate only where the provider does not report exact usage, and never to hold money.
"""

from __future__ import annotations

import math

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4  # role and separators


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def estimate_message_tokens(messages: list[dict[str, str]]) -> int:
    return sum(estimate_tokens(message["content"]) + TOKENS_PER_MESSAGE for message in messages) + 2


# Byte-level BPE (the GPT and Claude tokenizers) never makes more tokens than the text has UTF-8
# bytes; each message adds its role and separators (3-4 tokens in OpenAI's chat format) and the
# request the reply's priming. Generous margins: a bound that is too low lets a budget be overspent.
MESSAGE_OVERHEAD_BOUND = 8
REQUEST_OVERHEAD_BOUND = 8


def input_token_bound(messages: list[dict[str, str]]) -> int:
    """The most input tokens a provider can count for these messages."""
    content_bytes = sum(len(message["content"].encode()) for message in messages)
    return content_bytes + MESSAGE_OVERHEAD_BOUND * len(messages) + REQUEST_OVERHEAD_BOUND
