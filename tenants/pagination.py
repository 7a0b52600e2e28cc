from __future__ import annotations

import re
from typing import Any

from rest_framework import pagination
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """DRF's, but `?limit=` and `?offset=` that are not integers in range are a 400, as the schema
    says, where DRF silently used its default (`?offset=null` was page one, `?limit=1000` was 200)."""

    default_limit = 50
    max_limit = 200

    def get_limit(self, request: Request) -> int:
        return self._integer_param(request, self.limit_query_param, self.default_limit, 1, self.max_limit)

    def get_offset(self, request: Request) -> int:
        return self._integer_param(request, self.offset_query_param, 0, 0, None)

    @staticmethod
    def _integer_param(request: Request, name: str, default: int, minimum: int, maximum: int | None) -> int:
        values = request.query_params.getlist(name)
        if not values:
            return default
        raw = values[-1]
        if not raw.isascii() or not raw.isdigit() or int(raw) < minimum or (maximum and int(raw) > maximum):
            upper = f" to {maximum}" if maximum else " or more"
            raise ValidationError({name: [f"{name} must be an integer from {minimum}{upper}."]})
        return int(raw)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        bounds = {
            self.limit_query_param: {"minimum": 1, "maximum": self.max_limit, "default": self.default_limit},
            self.offset_query_param: {"minimum": 0, "default": 0},
        }
        for parameter in parameters:
            parameter["schema"].update(bounds.get(parameter["name"], {}))
        return parameters


CURSOR_PATTERN = re.compile(r"[A-Za-z0-9+/=_-]{1,200}")


class CursorPagination(pagination.CursorPagination):
    """Newest first, for tables that grow while a client pages through them (traces, feedback): a
    page never repeats or skips rows written meanwhile, and no page costs an OFFSET scan. `limit`
    and `cursor` are checked: a bad one is a 400, not a silently different page."""

    ordering = "-created_at"
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 200

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            size = int(raw)
        except ValueError:
            size = 0
        if not 1 <= size <= self.max_page_size:
            raise ValidationError({"limit": f"Must be an integer from 1 to {self.max_page_size}."})
        return size

    def decode_cursor(self, request: Request) -> Any:
        invalid = ValidationError(
            {"cursor": "Invalid cursor: pass the `next` or `previous` link's as given."}
        )
        encoded = request.query_params.get(self.cursor_query_param)
        # DRF's base64 decoding skips what is not base64 (a NUL...): refuse it instead of a first page.
        if encoded is not None and not CURSOR_PATTERN.fullmatch(encoded):
            raise invalid
        try:
            return super().decode_cursor(request)
        except NotFound:
            raise invalid from None

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {"type": "integer", "minimum": 1, "maximum": self.max_page_size}
        return parameters
