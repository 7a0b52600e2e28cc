from __future__ import annotations

import os
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from tenants.models import ApiKey, Scope, Tenant
from tenants.services import api_key_create, api_key_rotate, tenant_create

ADMIN_USERNAME = "admin"
DEMO_SLUG = "demo"
DEMO_KEY_NAME = "make run demo key"
# The previous run's key stays valid this long after a new one is printed.
DEMO_KEY_GRACE = timedelta(hours=1)


class Command(BaseCommand):
    help = "Idempotent local set-up for `make run`: an admin superuser and a demo tenant with a fresh key."

    def handle(self, *args: Any, **options: Any) -> None:
        password_note = self.ensure_admin()
        raw_key = self.fresh_demo_key()
        port = os.environ.get("PORT", "8000")
        base = f"http://127.0.0.1:{port}"
        self.stdout.write("")
        self.stdout.write(f"Admin:    {base}/admin/  user '{ADMIN_USERNAME}', {password_note}")
        self.stdout.write(f"API docs: {base}/api/docs/")
        self.stdout.write(
            f"Demo tenant '{DEMO_SLUG}' API key (shown once; the previous run's key expires in 1 h):"
        )
        self.stdout.write(f"  {raw_key}")
        self.stdout.write(f"  curl -s -H 'Authorization: Bearer {raw_key}' {base}/api/v1/me")
        self.stdout.write("")

    def ensure_admin(self) -> str:
        password_file = settings.DATA_DIR / "admin_password"
        user_model = get_user_model()
        if user_model.objects.filter(username=ADMIN_USERNAME).exists():
            if password_file.exists():
                return f"password {password_file.read_text().strip()} (from {password_file})"
            return "password unchanged (make manage ARGS='changepassword admin' to reset)"
        password = secrets.token_urlsafe(12)
        settings.DATA_DIR.mkdir(exist_ok=True)
        password_file.write_text(password)
        password_file.chmod(0o600)
        user_model.objects.create_superuser(ADMIN_USERNAME, "admin@localhost", password)
        return f"password {password} (kept in {password_file})"

    @transaction.atomic
    def fresh_demo_key(self) -> str:
        tenant = Tenant.objects.filter(slug=DEMO_SLUG).first()
        if tenant is None:
            tenant = tenant_create(name="Demo", slug=DEMO_SLUG, actor="cli")
        now = timezone.now()
        previous = (
            ApiKey.objects.filter(
                tenant=tenant, name=DEMO_KEY_NAME, revoked_at__isnull=True, rotated_to__isnull=True
            )
            .order_by("-created_at")
            .first()
        )
        if previous is not None and previous.is_usable_at(now):
            _, raw_key = api_key_rotate(tenant=tenant, api_key=previous, actor="cli", grace=DEMO_KEY_GRACE)
        else:
            _, raw_key = api_key_create(tenant=tenant, name=DEMO_KEY_NAME, scopes=Scope.values, actor="cli")
        return raw_key
