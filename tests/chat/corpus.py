"""A small fixed corpus for retrieval tests: five documents on distinct topics, two questions each."""

from __future__ import annotations

DOCUMENTS = {
    "Refund policy": (
        "Customers can request a refund within 30 days of purchase. Refunds are paid back to the original "
        "payment method within five business days. Digital downloads that were opened are not refundable. "
        "To start a refund, contact support with your order number."
    ),
    "Office plants": (
        "The office ficus needs watering every Tuesday. Succulents on the windowsill are watered once a "
        "month. The orchid in the meeting room prefers indirect sunlight and misting twice a week. "
        "Fertilizer is stored in the kitchen cupboard."
    ),
    "Deployment runbook": (
        "Deployments to production happen through the CI pipeline after a green build. Database migrations "
        "run before the new containers start. A rollback redeploys the previous image tag. Never deploy on "
        "Friday afternoons without an approval from the on-call engineer."
    ),
    "Parental leave": (
        "Employees receive sixteen weeks of paid parental leave. Leave can start up to two weeks before the "
        "expected birth or adoption date. Parental leave may be split into two blocks within the first year."
    ),
    "Espresso machine": (
        "The espresso machine descaling runs every two months using the citric acid tablets. Grind size "
        "for espresso should be fine, like table salt. Empty the drip tray and the coffee puck drawer every "
        "evening."
    ),
}

QUESTIONS = {
    "Refund policy": [
        "How many days do I have to request a refund?",
        "Are opened digital downloads refundable?",
    ],
    "Office plants": ["How often is the ficus watered?", "Where is the fertilizer stored?"],
    "Deployment runbook": ["How do I roll back a deployment?", "Can we deploy to production on Friday?"],
    "Parental leave": ["How many weeks of parental leave do employees get?", "Can parental leave be split?"],
    "Espresso machine": ["How often is the espresso machine descaled?", "What grind size for espresso?"],
}
