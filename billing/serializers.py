from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django.utils import timezone
from rest_framework import serializers

from tenants.serializers import RequestSerializer

MAX_USAGE_DAYS = 366


class UsageQuerySerializer(RequestSerializer):
    """?from=YYYY-MM-DD&to=YYYY-MM-DD&group_by=day|model (`from` is a Python keyword, hence get_fields)."""

    def get_fields(self) -> dict[str, serializers.Field]:
        return {
            "from": serializers.DateField(
                required=False,
                help_text="YYYY-MM-DD, 2000-01-01 or later, not after `to`; default: first day of this month",
            ),
            "to": serializers.DateField(
                required=False,
                help_text=f"YYYY-MM-DD, inclusive, tomorrow at the latest and at most {MAX_USAGE_DAYS} days "
                "after `from`; default: today",
            ),
            "group_by": serializers.ChoiceField(choices=["day", "model"], default="day"),
        }

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        today = timezone.localdate()
        start: date = attrs.get("from") or today.replace(day=1)
        end: date = attrs.get("to") or today
        if start > end:
            raise serializers.ValidationError({"from": "from must not be after to."})
        if start.year < 2000 or end > today + timedelta(days=1):
            raise serializers.ValidationError({"to": "Dates run from 2000-01-01 to tomorrow."})
        if end - start > timedelta(days=MAX_USAGE_DAYS):
            raise serializers.ValidationError({"to": f"The range is at most {MAX_USAGE_DAYS} days."})
        return {"start": start, "end": end, "group_by": attrs["group_by"]}
