from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from tenants.errors import DomainError
from tenants.models import Scope, Tenant
from tenants.services import api_key_create


class Command(BaseCommand):
    help = "Create an API key for a tenant; prints the key once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant_slug")
        parser.add_argument("--scopes", nargs="+", default=[Scope.CHAT], choices=Scope.values)
        parser.add_argument("--name", default="cli key")
        parser.add_argument("--expires-in-days", type=int, help="Expire the key after this many days.")
        parser.add_argument("--rpm", type=int, help="Per-key requests per minute (default: the tenant's).")
        parser.add_argument("--json", action="store_true", help="Print one JSON object instead of the key.")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant_slug"]).first()
        if tenant is None:
            raise CommandError(f"No tenant with slug '{options['tenant_slug']}'.")
        days = options["expires_in_days"]
        if days is not None and days < 1:
            raise CommandError("--expires-in-days must be at least 1.")
        expires_at = timezone.now() + timedelta(days=days) if days else None
        try:
            api_key, raw_key = api_key_create(
                tenant=tenant,
                name=options["name"],
                scopes=options["scopes"],
                actor="cli",
                expires_at=expires_at,
                requests_per_minute=options["rpm"],
            )
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        if options["json"]:
            self.stdout.write(
                json.dumps({"tenant_id": tenant.pk, "key_id": api_key.public_id, "key": raw_key})
            )
        else:
            self.stdout.write(raw_key)
