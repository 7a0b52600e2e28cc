"""How the admin writes money, months, times, counts and budget states, the same on every page.

Money is stored as integer nano-dollars (billing.models); lists show dollars and cents, rounded
half-up, and only invoice line items show the exact sub-cent amount.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from django.templatetags.static import static
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from billing.documents import format_dollars
from billing.selectors import BUDGET_BLOCKED, BUDGET_OK, BUDGET_WARNING, BUDGET_WARNING_PERCENT

NANOS_PER_USD = 1_000_000_000
EMPTY = "-"


def dollars(amount_nanos: int | None) -> str:
    """'$1,234.56': rounded half-up to the cent, with thousands separators."""
    return EMPTY if amount_nanos is None else format_dollars(amount_nanos)


def dollars_exact(amount_nanos: int | None) -> str:
    """'$1,234.0005328': every nano-dollar, at least two decimals (invoice line items only)."""
    if amount_nanos is None:
        return EMPTY
    value = Decimal(amount_nanos) / NANOS_PER_USD
    whole, _, fraction = format(abs(value).normalize(), "f").partition(".")
    text = f"${int(whole):,}.{fraction.ljust(2, '0')}"
    return f"-{text}" if value < 0 else text


def dollars_from_usd(amount: Decimal | None) -> str:
    return EMPTY if amount is None else dollars(int(amount * NANOS_PER_USD))


def period(month: date | None) -> str:
    """A billing month as '2026-12'."""
    return EMPTY if month is None else f"{month:%Y-%m}"


def timestamp(moment: datetime | None) -> str:
    """'2026-12-02 06:30 UTC', in the project's time zone, named."""
    if moment is None:
        return EMPTY
    local = timezone.localtime(moment)
    return f"{local:%Y-%m-%d %H:%M} {local.tzname()}"


def count(value: int | None) -> str:
    """'1,234,567'."""
    return EMPTY if value is None else f"{value:,}"


def percent(value: float | None) -> str:
    return EMPTY if value is None else f"{value:,.0f}%"


# The state of a tenant's budget this month, as billing.selectors.budget_columns computes it.
_STATES = {
    BUDGET_OK: ("icon-yes.svg", "OK"),
    BUDGET_WARNING: ("icon-alert.svg", f"≥ {BUDGET_WARNING_PERCENT}%"),
    BUDGET_BLOCKED: ("icon-no.svg", "Blocked"),
}


def budget_state(state: int | None) -> SafeString:
    """An icon and a word: colour is never the only signal."""
    icon, label = _STATES[state or BUDGET_OK]
    return format_html(
        '<span class="budget-state budget-state-{}"><img src="{}" alt=""> {}</span>',
        state or BUDGET_OK,
        static(f"admin/img/{icon}"),
        label,
    )


def spend_bar(spent_nanos: int, limit_nanos: int | None) -> SafeString:
    """A <meter> with its numbers written beside it (the bar alone would be colour only)."""
    if not limit_nanos:
        return format_html("{} spent, no monthly budget", dollars(spent_nanos))
    used = spent_nanos * 100 / limit_nanos
    return format_html(
        '<meter min="0" max="100" low="{}" high="99.99" optimum="0" value="{}" '
        'aria-label="Share of the monthly budget spent"></meter> {} of {} ({})',
        BUDGET_WARNING_PERCENT,
        f"{min(used, 100):.2f}",
        dollars(spent_nanos),
        dollars(limit_nanos),
        percent(used),
    )
