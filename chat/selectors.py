"""Reads for the chat app."""

from __future__ import annotations

from billing.services import chat_models
from chat.circuit import CircuitState, circuit_state
from chat.models import ChatSettings
from chat.providers import provider_configured
from tenants.models import Tenant


def available_chat_models(*, tenant: Tenant) -> list[tuple[str, str]]:
    """(provider, model) of the chat models this tenant may use: priced, of a configured provider,
    and allowed for the tenant. What /v1/models lists."""
    return [
        (provider, model)
        for provider, model in chat_models()
        if provider_configured(provider) and tenant.allows_model(model)
    ]


def known_circuits() -> list[CircuitState]:
    """The breaker state of every provider:model some chain can call (the default and each tenant's)."""
    from chat.services import default_chain

    targets = set(default_chain())
    for chain, cheap in ChatSettings.objects.values_list("fallback_chain", "routing_cheap_model"):
        targets.update(chain)
        if cheap:
            targets.add(cheap)
    return [circuit_state(target) for target in sorted(targets)]
