from django.db import migrations, models

from billing.pricing_data import seeded_embedding_models


def mark_embedding_models(apps, schema_editor):
    ModelPrice = apps.get_model("billing", "ModelPrice")
    for provider, model in seeded_embedding_models():
        ModelPrice.objects.filter(provider=provider, model=model).update(kind="embedding")


class Migration(migrations.Migration):
    """Prices say whether a model chats or embeds: /v1/models offers, and chat accepts, chat models only."""

    dependencies = [
        ("billing", "0003_budget_validators"),
    ]

    operations = [
        migrations.AddField(
            model_name="modelprice",
            name="kind",
            field=models.CharField(
                choices=[("chat", "Chat"), ("embedding", "Embedding")],
                default="chat",
                help_text="Chat models are offered by /v1/models and chat; embedding models only embed.",
                max_length=16,
            ),
        ),
        migrations.RunPython(mark_embedding_models, migrations.RunPython.noop),
    ]
