"""Prices, the append-only usage ledger, budgets with their period balances and reservations,
budget alerts and invoices.

Money is an integer number of nano-dollars (1e-9 USD) everywhere it is stored or summed:
exact in SQL, no float anywhere. A ledger entry's cost is its tokens times the unit prices,
rounded half-up to the nano-dollar once; invoices sum those integers.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, NoReturn

from django.contrib.postgres.fields import ArrayField
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from tenants.models import Tenant, TenantOwnedModel

NANOS_PER_USD = 1_000_000_000


def usd(nanos: int | None) -> Decimal | None:
    return None if nanos is None else Decimal(nanos) / NANOS_PER_USD


def nanos(amount_usd: Decimal) -> int:
    return int((amount_usd * NANOS_PER_USD).to_integral_value())


class ModelKind(models.TextChoices):
    CHAT = "chat", "Chat"
    EMBEDDING = "embedding", "Embedding"


class ModelPrice(models.Model):
    """USD per million tokens from `effective_from` on. A new price is a new row, so the entries
    already priced keep the price they were charged at."""

    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=100)
    kind = models.CharField(
        max_length=16,
        choices=ModelKind.choices,
        default=ModelKind.CHAT,
        help_text="Chat models are offered by /v1/models and chat; embedding models only embed.",
    )
    input_per_mtok = models.DecimalField(max_digits=12, decimal_places=6)
    cached_input_per_mtok = models.DecimalField(max_digits=12, decimal_places=6)
    output_per_mtok = models.DecimalField(max_digits=12, decimal_places=6)
    currency = models.CharField(max_length=3, default="USD", editable=False)
    effective_from = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["provider", "model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "model", "effective_from"], name="price_unique_start"
            ),
            models.CheckConstraint(
                condition=Q(input_per_mtok__gte=0, cached_input_per_mtok__gte=0, output_per_mtok__gte=0),
                name="price_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider}:{self.model} from {self.effective_from:%Y-%m-%d}"


class AppendOnlyQuerySet(models.QuerySet[Any]):
    def update(self, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("The usage ledger is append-only; record a correction entry instead.")

    def delete(self) -> NoReturn:
        raise AppendOnlyError("The usage ledger is append-only; record a correction entry instead.")


class AppendOnlyError(Exception):
    pass


class UsageKind(models.TextChoices):
    COMPLETION = "completion", "Completion"
    CACHE_HIT = "cache_hit", "Cache hit (free)"
    EMBEDDING = "embedding", "Embedding"
    CORRECTION = "correction", "Correction"


class UsageEntry(TenantOwnedModel):
    """One charge. Unique per (tenant, request id, kind), so a retried request is charged once."""

    # Financial records outlive nothing silently: a tenant with ledger entries cannot be deleted.
    # No index of its own: the (tenant, created_at) index below serves every tenant lookup.
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="usage_entries", db_index=False)
    request_id = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=UsageKind.choices, default=UsageKind.COMPLETION)
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=100)
    price = models.ForeignKey(ModelPrice, on_delete=models.PROTECT, related_name="+")
    input_tokens = models.PositiveIntegerField(default=0)
    cached_input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cost_nanos = models.BigIntegerField(help_text="Charged, in 1e-9 USD; negative only for corrections.")
    saved_nanos = models.BigIntegerField(default=0, help_text="What a cache hit would have cost.")
    prompt_name = models.CharField(max_length=100, blank=True)
    prompt_version = models.PositiveIntegerField(null=True, blank=True)
    prompt_variant = models.BigIntegerField(null=True, blank=True)
    trace_id = models.UUIDField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=False)

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "usage entries"
        constraints = [
            models.UniqueConstraint(fields=["tenant", "request_id", "kind"], name="usage_once_per_request"),
        ]
        indexes = [models.Index(fields=["tenant", "created_at"], name="usage_tenant_time")]

    def __str__(self) -> str:
        return f"{self.request_id} {self.kind} {self.model}"

    @property
    def cost_usd(self) -> Decimal | None:
        return usd(self.cost_nanos)

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise AppendOnlyError("The usage ledger is append-only; record a correction entry instead.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise AppendOnlyError("The usage ledger is append-only; record a correction entry instead.")


def default_thresholds() -> list[int]:
    return [50, 80, 100]


class TenantBudget(models.Model):
    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="budget")
    monthly_budget_usd = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Empty: no monthly budget.",
        validators=[MinValueValidator(Decimal(0))],
    )
    daily_budget_usd = models.DecimalField(
        max_digits=12,
        decimal_places=2,
        null=True,
        blank=True,
        help_text="Empty: no daily budget.",
        validators=[MinValueValidator(Decimal(0))],
    )
    hard_limit = models.BooleanField(
        default=True, help_text="Refuse requests (402) that would exceed a budget."
    )
    alert_thresholds = ArrayField(
        models.PositiveSmallIntegerField(validators=[MinValueValidator(1), MaxValueValidator(1000)]),
        default=default_thresholds,
        blank=True,
        help_text="Percent of the monthly budget, e.g. 50,80,100.",
    )
    alert_emails = ArrayField(models.EmailField(), default=list, blank=True)
    webhook_url = models.URLField(blank=True)
    webhook_secret = models.CharField(
        max_length=64, blank=True, help_text="Signs webhook bodies (HMAC-SHA256)."
    )
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"budget of {self.tenant}"


class BudgetPeriod(TenantOwnedModel):
    """The balance row reservations update atomically: one per tenant and month, carrying this
    month's counters, today's counters and the limits in force (copied from TenantBudget)."""

    month = models.DateField(help_text="First day of the month.")
    spent_nanos = models.BigIntegerField(default=0)
    reserved_nanos = models.BigIntegerField(default=0)
    tokens_used = models.BigIntegerField(default=0)
    tokens_reserved = models.BigIntegerField(default=0)
    day = models.DateField()
    day_spent_nanos = models.BigIntegerField(default=0)
    day_reserved_nanos = models.BigIntegerField(default=0)
    month_limit_nanos = models.BigIntegerField(null=True, blank=True)
    day_limit_nanos = models.BigIntegerField(null=True, blank=True)
    hard_limit = models.BooleanField(default=True)
    alert_thresholds = ArrayField(models.PositiveSmallIntegerField(), default=default_thresholds, blank=True)

    class Meta:
        ordering = ["-month"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "month"], name="one_budget_period_per_month")
        ]

    def __str__(self) -> str:
        return f"{self.tenant_id} {self.month:%Y-%m}"


class Reservation(TenantOwnedModel):
    """Worst-case cost held while a provider call runs; settled, released, or swept when expired."""

    period = models.ForeignKey(BudgetPeriod, on_delete=models.CASCADE, related_name="+")
    request_id = models.CharField(max_length=100)
    amount_nanos = models.BigIntegerField()
    tokens = models.BigIntegerField()
    day = models.DateField()
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"reservation {self.request_id}"


class BudgetAlert(TenantOwnedModel):
    """One per tenant, month and threshold: the unique constraint makes it exactly once."""

    month = models.DateField()
    threshold_percent = models.PositiveSmallIntegerField()
    spent_nanos = models.BigIntegerField()
    budget_nanos = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    email_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "month", "threshold_percent"], name="alert_once_per_threshold"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.threshold_percent}% of {self.month:%Y-%m} budget"


class InvoiceStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    FINALIZED = "finalized", "Finalized"
    VOID = "void", "Void"


class Invoice(TenantOwnedModel):
    """A tenant's usage for one calendar month. Finalized invoices are immutable and numbered
    without gaps per year; a mistake is corrected by voiding and issuing a replacement."""

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="invoices")
    period = models.DateField(help_text="First day of the invoiced month.")
    status = models.CharField(max_length=10, choices=InvoiceStatus.choices, default=InvoiceStatus.DRAFT)
    number = models.CharField(max_length=20, null=True, blank=True, unique=True)
    currency = models.CharField(max_length=3, default="USD")
    billed_to = models.CharField(max_length=200)
    subtotal_nanos = models.BigIntegerField(default=0)
    total_nanos = models.BigIntegerField(default=0)
    entry_count = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    finalized_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    void_reason = models.CharField(max_length=500, blank=True)
    replaces = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="replaced_by"
    )

    class Meta:
        ordering = ["-period", "-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "period"], condition=~Q(status="void"), name="one_live_invoice_per_month"
            ),
        ]

    def __str__(self) -> str:
        return self.number or f"draft {self.period:%Y-%m} for {self.billed_to}"

    @property
    def total_usd(self) -> Decimal | None:
        return usd(self.total_nanos)

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Finalized invoices are immutable; the only change left is voiding them."""
        if not self._state.adding:
            stored = Invoice.objects.filter(pk=self.pk).values_list("status", flat=True).first()
            fields = set(kwargs.get("update_fields") or ())
            voiding = (
                stored == InvoiceStatus.FINALIZED
                and self.status == InvoiceStatus.VOID
                and bool(fields)
                and fields <= {"status", "voided_at", "void_reason"}
            )
            if stored != InvoiceStatus.DRAFT and not voiding:
                raise ImmutableInvoiceError(f"Invoice {self} is {stored}; it can no longer change.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise ImmutableInvoiceError("Invoices are never deleted; void a finalized one instead.")


class ImmutableInvoiceError(Exception):
    pass


class InvoiceLine(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=UsageKind.choices)
    requests = models.BigIntegerField()
    input_tokens = models.BigIntegerField()
    cached_input_tokens = models.BigIntegerField()
    output_tokens = models.BigIntegerField()
    input_per_mtok = models.DecimalField(max_digits=12, decimal_places=6)
    cached_input_per_mtok = models.DecimalField(max_digits=12, decimal_places=6)
    output_per_mtok = models.DecimalField(max_digits=12, decimal_places=6)
    amount_nanos = models.BigIntegerField()
    saved_nanos = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["invoice", "provider", "model", "kind", "id"]

    def __str__(self) -> str:
        return f"{self.provider}:{self.model} {self.kind}"

    @property
    def amount_usd(self) -> Decimal | None:
        return usd(self.amount_nanos)


class InvoiceSequence(models.Model):
    """The last invoice number issued per year; incremented in the finalizing transaction (gapless)."""

    year = models.PositiveSmallIntegerField(primary_key=True)
    last_number = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.year}: {self.last_number}"
