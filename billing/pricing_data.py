"""The seed price table in billing/data/model_prices.json, loaded by migration 0002 and by tests."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.utils.dateparse import parse_datetime

PRICES_FILE = Path(__file__).resolve().parent / "data" / "model_prices.json"


def seed_prices(price_model: Any) -> int:
    """Adds the file's prices that are missing; `price_model` may be a migration's historical model."""
    data = json.loads(PRICES_FILE.read_text())
    effective_from = parse_datetime(data["effective_from"])
    has_kind = any(field.name == "kind" for field in price_model._meta.get_fields())  # from 0004 on
    created = 0
    for row in data["prices"]:
        kind = {"kind": row.get("kind", "chat")} if has_kind else {}
        _, was_created = price_model.objects.get_or_create(
            provider=row["provider"],
            model=row["model"],
            effective_from=effective_from,
            defaults={
                **kind,
                "input_per_mtok": Decimal(row["input"]),
                "cached_input_per_mtok": Decimal(row["cached_input"]),
                "output_per_mtok": Decimal(row["output"]),
            },
        )
        created += was_created
    return created


def seeded_embedding_models() -> list[tuple[str, str]]:
    """(provider, model) of the file's embedding models."""
    data = json.loads(PRICES_FILE.read_text())
    return [(row["provider"], row["model"]) for row in data["prices"] if row.get("kind") == "embedding"]
