"""The API's JSON parser: DRF's, refusing with a 400 two kinds of body it lets through to a 500 later.

- Nesting deeper than Python's recursion limit (`[[[[...]]]]` in 200 KB): json raises RecursionError,
  which DRF's parser does not catch (it catches ValueError).
- Lone UTF-16 surrogates (`"\\ud800"`): valid JSON, but not text. PostgreSQL cannot store it, the
  SDKs cannot send it to a provider (their failure would count against the provider's circuit,
  shared by every tenant), and the renderer cannot answer with it. In a UTF-8 body only an escape
  can produce one (UTF-8 bytes cannot), so there the parsed data is checked only when the raw body
  holds such an escape; a body in another charset (UTF-16, UTF-32..., which DRF decodes as the
  Content-Type says) is always checked.
"""

from __future__ import annotations

import codecs
import io
import json
import re
from typing import Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def has_lone_surrogate(data: Any) -> bool:
    """Whether a parsed JSON document holds a surrogate that is not half of a pair (a pair is one
    character once parsed, so any surrogate left is lone)."""
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class StrictJSONParser(JSONParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        raw = stream.read()
        try:
            data = super().parse(io.BytesIO(raw), media_type, parser_context)
            # the charset DRF decoded with (it refused an unknown one)
            encoding = (parser_context or {}).get("encoding") or settings.DEFAULT_CHARSET
            utf8 = codecs.lookup(encoding).name == "utf-8"
            lone_surrogate = (not utf8 or bool(_SURROGATE_ESCAPE.search(raw))) and has_lone_surrogate(data)
        except RecursionError:
            raise ParseError("JSON parse error - the document is nested too deeply.") from None
        if lone_surrogate:
            raise ParseError(
                "JSON parse error - a lone UTF-16 surrogate (\\ud800 to \\udfff, unpaired) is not text."
            )
        return data
