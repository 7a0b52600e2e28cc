"""Cache coherence only: a saved key or tenant drops the cached authentication records.

Signals, rather than calls in each service, because operators also save these rows from the
admin and the shell; every path that saves must invalidate, and this is the one place that sees them all.
"""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from tenants.models import ApiKey, Tenant
from tenants.selectors import api_key_cache_invalidate


@receiver(post_delete, sender=ApiKey, dispatch_uid="tenants.apikey.cache.delete")
@receiver(post_save, sender=ApiKey, dispatch_uid="tenants.apikey.cache")
def drop_cached_api_key(sender: type[ApiKey], instance: ApiKey, **kwargs: Any) -> None:
    api_key_cache_invalidate(public_ids=[instance.public_id])


@receiver(post_save, sender=Tenant, dispatch_uid="tenants.tenant.cache")
def drop_cached_tenant_keys(sender: type[Tenant], instance: Tenant, **kwargs: Any) -> None:
    """On delete, the tenant's keys are deleted first (cascade), each dropping its own entry."""
    public_ids = ApiKey.objects.filter(tenant=instance).values_list("public_id", flat=True)
    api_key_cache_invalidate(public_ids=list(public_ids))
