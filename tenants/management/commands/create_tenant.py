from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from billing.services import budget_update
from tenants.errors import DomainError
from tenants.models import Scope
from tenants.services import api_key_create, tenant_create


class Command(BaseCommand):
    help = "Create a tenant and its first API key (all scopes); prints the tenant id and the key once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--slug", help="Defaults to the slugified name.")
        parser.add_argument("--rpm", type=int, help="Requests per minute.")
        parser.add_argument("--tpm", type=int, help="Tokens per minute.")
        parser.add_argument("--monthly-tokens", type=int, help="Monthly token quota.")
        parser.add_argument("--models", help="Comma-separated allowed models or patterns (gpt-4o*,local).")
        parser.add_argument("--budget-usd", type=Decimal, help="Monthly budget in USD (hard limit).")
        parser.add_argument("--daily-budget-usd", type=Decimal, help="Daily budget in USD (hard limit).")
        parser.add_argument("--json", action="store_true", help="Print one JSON object instead of text.")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        models = [m.strip() for m in options["models"].split(",") if m.strip()] if options["models"] else None
        try:
            tenant = tenant_create(
                name=options["name"],
                slug=options["slug"],
                actor="cli",
                requests_per_minute=options["rpm"],
                tokens_per_minute=options["tpm"],
                monthly_token_quota=options["monthly_tokens"],
                allowed_models=models,
            )
            api_key, raw_key = api_key_create(
                tenant=tenant, name="initial key", scopes=Scope.values, actor="cli"
            )
            budget = {
                "monthly_budget_usd": options["budget_usd"],
                "daily_budget_usd": options["daily_budget_usd"],
            }
            if any(value is not None for value in budget.values()):
                budget_update(tenant=tenant, actor="cli", **budget)
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {"tenant_id": tenant.pk, "slug": tenant.slug, "key_id": api_key.public_id, "key": raw_key}
                )
            )
            return
        self.stdout.write(f"Tenant created: id={tenant.pk} slug={tenant.slug} name={tenant.name}")
        self.stdout.write(f"API key {api_key.public_id} (scopes: {', '.join(api_key.scopes)}), shown once:")
        self.stdout.write(raw_key)
