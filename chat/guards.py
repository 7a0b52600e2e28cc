"""Input and output guards: size limits, prompt-injection heuristics, and redaction of e-mail
addresses, phone numbers, card numbers and API-key-like strings."""

from __future__ import annotations

import re
from collections import Counter

INJECTION_PATTERNS = [
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"\b(ignore|disregard|forget)\b.{0,40}\b(previous|prior|above|all|earlier|system)\b.{0,20}"
        r"\b(instructions?|prompts?|rules|messages?)",
        r"\b(reveal|show|print|repeat|leak)\b.{0,40}\b(system|hidden|initial)\s+(prompt|instructions?|message)",
        r"\byou are now\b.{0,40}\b(dan|jailbroken|unrestricted|developer mode)",
        r"\b(developer|god|jailbreak)\s+mode\b",
        r"\bact as\b.{0,30}\bwithout (any )?(restrictions|filters|rules)",
        r"</?\s*(system|im_start|im_end)\s*>",
    )
]

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b")
PHONE = re.compile(r"(?<![\w+])\+?\d{1,3}?[ .-]?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}(?![\w])")
CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
SECRET = re.compile(
    r"\b(?:sk-(?:ant-|proj-)?[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|"
    r"xox[abpr]-[A-Za-z0-9-]{10,}|tk_[a-z0-9]{12}_[A-Za-z0-9_-]{20,}|AIza[0-9A-Za-z_-]{35})"
)


def _luhn_ok(number: str) -> bool:
    digits = [int(d) for d in re.sub(r"\D", "", number)]
    checksum = sum(digits[-1::-2]) + sum(sum(divmod(d * 2, 10)) for d in digits[-2::-2])
    return 13 <= len(digits) <= 19 and checksum % 10 == 0


def injection_findings(text: str) -> list[str]:
    return [match.group(0)[:80] for pattern in INJECTION_PATTERNS if (match := pattern.search(text))]


# Order matters: secrets and cards before phones, whose digits they contain.
REDACTORS = [
    ("secret", SECRET, None),
    ("card", CARD, _luhn_ok),
    ("email", EMAIL, None),
    ("phone", PHONE, lambda text: len(re.sub(r"\D", "", text)) >= 9),
]


def redact(text: str, categories: list[str]) -> tuple[str, Counter[str]]:
    """Replaces matches of the enabled categories with [REDACTED:<category>]; returns counts."""
    counts: Counter[str] = Counter()
    for category, pattern, accept in REDACTORS:
        if category not in categories:
            continue

        def replace(match: re.Match[str], category: str = category, accept: object = accept) -> str:
            if accept is not None and not accept(match.group(0)):  # type: ignore[operator]
                return match.group(0)
            counts[category] += 1
            return f"[REDACTED:{category}]"

        text = pattern.sub(replace, text)
    return text, counts


# What a card or phone number is written with: such a run before the last word may still be growing.
NUMBER_CHARACTERS = frozenset("0123456789 +-().")
# The longest card or phone number the patterns match (19 digits and 18 separators) fits in this many
# characters: a longer run of numbers need not be held back further.
LONGEST_NUMBER = 40


class StreamRedactor:
    """Redacts a stream of deltas. Only what may still grow into a match is held back: the unfinished
    last word and, before it, a run of digits and separators (a card or phone number arriving in
    pieces). Everything before goes out at once, so the first words are not delayed; the output is
    the same as redacting the whole text."""

    def __init__(self, categories: list[str]) -> None:
        self.categories = categories
        self.buffer = ""
        self.counts: Counter[str] = Counter()

    def _word_start(self, position: int) -> int:
        while position > 0 and not self.buffer[position - 1].isspace():
            position -= 1
        return position

    def _safe_cut(self) -> int:
        """Where the text that can no longer change begins to be held back (just after whitespace)."""
        buffer = self.buffer
        cut = self._word_start(len(buffer))
        run = cut
        while run > 0 and cut - run < LONGEST_NUMBER and buffer[run - 1] in NUMBER_CHARACTERS:
            run -= 1
        while run < cut and buffer[run].isspace():
            run += 1
        if any(character.isdigit() for character in buffer[run:cut]):
            cut = self._word_start(run)
        spans = [
            match.span()
            for category, pattern, _ in REDACTORS
            if category in self.categories
            for match in pattern.finditer(buffer)
        ]
        while inside := [start for start, end in spans if start < cut < end]:
            cut = self._word_start(min(inside))
        return cut

    def feed(self, delta: str) -> str:
        if not self.categories:
            return delta
        self.buffer += delta
        cut = self._safe_cut()
        if cut <= 0:
            return ""
        ready, self.buffer = self.buffer[:cut], self.buffer[cut:]
        redacted, counts = redact(ready, self.categories)
        self.counts.update(counts)
        return redacted

    def flush(self) -> str:
        redacted, counts = redact(self.buffer, self.categories)
        self.counts.update(counts)
        self.buffer = ""
        return redacted
