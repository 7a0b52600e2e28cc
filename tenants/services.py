"""Every write about tenants and API keys, each one transactional and audited."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from tenants.errors import CACHE_ERRORS, ConflictError, DomainError
from tenants.models import ApiKey, AuditEvent, Scope, Tenant
from tenants.selectors import api_key_lookup

PUBLIC_ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
PUBLIC_ID_LENGTH = 12
PUBLIC_ID_PATTERN = f"[a-z0-9]{{{PUBLIC_ID_LENGTH}}}"  # of PUBLIC_ID_ALPHABET
_PUBLIC_ID_CHARACTERS = frozenset(PUBLIC_ID_ALPHABET)
# Compared against when the public id is unknown, so a miss costs the same as a wrong secret.
_MISSING_KEY_HASH = hashlib.sha256(b"no such key").hexdigest()


def hash_api_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def audit_event_record(
    *, tenant: Tenant | None, actor: str, action: str, target: object, changes: dict | None = None
) -> AuditEvent:
    target_id = getattr(target, "public_id", None) or getattr(target, "pk", "")
    return AuditEvent.objects.create(
        tenant=tenant,
        actor=actor,
        action=action,
        target_type=type(target).__name__,
        target_id=str(target_id),
        changes=changes or {},
    )


def validate_scopes(scopes: Iterable[str]) -> list[str]:
    unique = sorted(set(scopes))
    if not unique:
        raise DomainError("At least one scope is required.", param="scopes")
    unknown = [scope for scope in unique if scope not in Scope.values]
    if unknown:
        raise DomainError(
            f"Unknown scope(s): {', '.join(unknown)}. Allowed: {', '.join(Scope.values)}.", param="scopes"
        )
    return unique


@transaction.atomic
def tenant_create(
    *,
    name: str,
    actor: str,
    slug: str | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    monthly_token_quota: int | None = None,
    allowed_models: list[str] | None = None,
) -> Tenant:
    slug = slug or slugify(name)
    if not slug:
        raise DomainError("A tenant needs a name that yields a slug (letters or digits).", param="name")
    if Tenant.objects.filter(slug=slug).exists():
        raise ConflictError(f"A tenant with slug '{slug}' already exists.", param="slug")
    tenant = Tenant(name=name, slug=slug)
    overrides = {
        "requests_per_minute": requests_per_minute,
        "tokens_per_minute": tokens_per_minute,
        "monthly_token_quota": monthly_token_quota,
        "allowed_models": allowed_models,
    }
    for field, value in overrides.items():
        if value is not None:
            setattr(tenant, field, value)
    tenant.full_clean(validate_unique=False)
    try:
        with transaction.atomic():
            tenant.save()
    except IntegrityError as exc:  # a concurrent create won the slug
        raise ConflictError(f"A tenant with slug '{slug}' already exists.", param="slug") from exc
    audit_event_record(tenant=tenant, actor=actor, action="tenant.create", target=tenant)
    return tenant


def _new_key_material() -> tuple[str, str]:
    public_id = "".join(secrets.choice(PUBLIC_ID_ALPHABET) for _ in range(PUBLIC_ID_LENGTH))
    return public_id, f"{settings.API_KEY_PREFIX}_{public_id}_{secrets.token_urlsafe(32)}"


@transaction.atomic
def api_key_create(
    *,
    tenant: Tenant,
    name: str,
    scopes: Iterable[str],
    actor: str,
    expires_at: datetime | None = None,
    requests_per_minute: int | None = None,
    rotated_from: ApiKey | None = None,
) -> tuple[ApiKey, str]:
    """Returns the stored key and the raw secret, which is never stored or shown again."""
    if not name.strip():
        raise DomainError("A key needs a name.", param="name")
    if expires_at is not None and expires_at <= timezone.now():
        raise DomainError("expires_at must be in the future.", param="expires_at")
    if requests_per_minute is not None and requests_per_minute < 1:
        raise DomainError("requests_per_minute must be at least 1.", param="requests_per_minute")
    public_id, raw_key = _new_key_material()
    api_key = ApiKey.objects.create(
        tenant=tenant,
        public_id=public_id,
        name=name.strip(),
        secret_hash=hash_api_key(raw_key),
        scopes=validate_scopes(scopes),
        requests_per_minute=requests_per_minute,
        expires_at=expires_at,
        created_by=actor,
        rotated_from=rotated_from,
    )
    audit_event_record(
        tenant=tenant,
        actor=actor,
        action="api_key.create",
        target=api_key,
        changes={"scopes": [None, api_key.scopes], "expires_at": [None, _iso(expires_at)]},
    )
    return api_key, raw_key


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def _locked_usable_key(*, tenant: Tenant, api_key: ApiKey, action: str) -> ApiKey:
    locked = ApiKey.objects.select_for_update().get(pk=api_key.pk, tenant=tenant)
    if not locked.is_usable_at(timezone.now()):
        raise ConflictError(f"Key {locked.public_id} is already {locked.status}; it cannot be {action}.")
    return locked


@transaction.atomic
def api_key_revoke(*, tenant: Tenant, api_key: ApiKey, actor: str) -> ApiKey:
    locked = _locked_usable_key(tenant=tenant, api_key=api_key, action="revoked")
    locked.revoked_at = timezone.now()
    locked.save(update_fields=["revoked_at"])
    audit_event_record(
        tenant=tenant,
        actor=actor,
        action="api_key.revoke",
        target=locked,
        changes={"revoked_at": [None, _iso(locked.revoked_at)]},
    )
    return locked


@transaction.atomic
def api_key_rotate(
    *, tenant: Tenant, api_key: ApiKey, actor: str, grace: timedelta | None = None
) -> tuple[ApiKey, str]:
    """A new key with the same name, scopes and limits; the old one keeps working for `grace`."""
    grace = settings.API_KEY_ROTATION_GRACE if grace is None else grace
    if grace < timedelta(0) or grace > settings.API_KEY_ROTATION_MAX_GRACE:
        max_seconds = int(settings.API_KEY_ROTATION_MAX_GRACE.total_seconds())
        raise DomainError(f"grace_seconds must be between 0 and {max_seconds}.", param="grace_seconds")
    old = _locked_usable_key(tenant=tenant, api_key=api_key, action="rotated")
    if hasattr(old, "rotated_to"):
        raise ConflictError(f"Key {old.public_id} was already rotated to {old.rotated_to.public_id}.")
    new_key, raw_key = api_key_create(
        tenant=tenant,
        name=old.name,
        scopes=old.scopes,
        actor=actor,
        expires_at=old.expires_at,
        requests_per_minute=old.requests_per_minute,
        rotated_from=old,
    )
    grace_end = timezone.now() + grace
    previous_expiry = old.expires_at
    old.expires_at = grace_end if previous_expiry is None else min(previous_expiry, grace_end)
    old.save(update_fields=["expires_at"])
    audit_event_record(
        tenant=tenant,
        actor=actor,
        action="api_key.rotate",
        target=old,
        changes={
            "expires_at": [_iso(previous_expiry), _iso(old.expires_at)],
            "rotated_to": [None, new_key.public_id],
        },
    )
    return new_key, raw_key


def api_key_authenticate(*, raw_key: str) -> ApiKey | None:
    """The usable key (with its tenant) for a raw key, or None; never says which part was wrong."""
    prefix, _, rest = raw_key.partition("_")
    public_id, _, secret = rest.partition("_")
    api_key = None
    well_formed = len(public_id) == PUBLIC_ID_LENGTH and _PUBLIC_ID_CHARACTERS.issuperset(public_id)
    if prefix == settings.API_KEY_PREFIX and secret and well_formed:  # a NUL never reaches PostgreSQL
        api_key = api_key_lookup(public_id=public_id)
    stored_hash = api_key.secret_hash if api_key else _MISSING_KEY_HASH
    hash_matches = hmac.compare_digest(stored_hash, hash_api_key(raw_key))
    now = timezone.now()
    if api_key is None or not hash_matches or not api_key.is_usable_at(now):
        return None
    _touch_last_used(api_key, now)
    return api_key


# key pk -> monotonic time this process last claimed the key's last-used window.
_last_used_claims: dict[int, float] = {}


def _touch_last_used(api_key: ApiKey, now: datetime) -> None:
    """One UPDATE per key per resolution window, whatever the request rate or number of workers.

    Each process asks Redis at most once per window (the memo above); Redis's atomic SET NX then
    picks one process to write. Without Redis, the conditional UPDATE alone still keeps writes
    rare (it matches no row inside the window).
    """
    resolution = settings.API_KEY_LAST_USED_RESOLUTION
    claimed_at = _last_used_claims.get(api_key.pk)
    if claimed_at is not None and time.monotonic() - claimed_at < resolution.total_seconds():
        return
    _last_used_claims[api_key.pk] = time.monotonic()
    try:
        claimed = cache.add(f"apikey:touched:{api_key.pk}", 1, int(resolution.total_seconds()))
    except CACHE_ERRORS:
        claimed = True
    if not claimed:
        return
    threshold = now - resolution
    ApiKey.objects.filter(pk=api_key.pk).exclude(last_used_at__gt=threshold).update(last_used_at=now)
    api_key.last_used_at = now
