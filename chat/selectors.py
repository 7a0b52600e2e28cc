"""Reads for the chat app."""

from __future__ import annotations

from chat.circuit import CircuitState, circuit_state
from chat.models import ChatSettings


def known_circuits() -> list[CircuitState]:
    """The breaker state of every provider:model some chain can call (the default and each tenant's)."""
    from chat.services import default_chain

    targets = set(default_chain())
    for chain, cheap in ChatSettings.objects.values_list("fallback_chain", "routing_cheap_model"):
        targets.update(chain)
        if cheap:
            targets.add(cheap)
    return [circuit_state(target) for target in sorted(targets)]
