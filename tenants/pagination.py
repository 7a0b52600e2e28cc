from __future__ import annotations

from typing import Any

from rest_framework import pagination
from rest_framework.exceptions import ValidationError
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
