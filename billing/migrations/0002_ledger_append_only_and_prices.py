import json
from decimal import Decimal
from pathlib import Path

from django.db import migrations
from django.utils.dateparse import parse_datetime

APPEND_ONLY_SQL = """
CREATE FUNCTION billing_usage_is_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the usage ledger is append-only (% refused on billing_usageentry)', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER billing_usage_append_only
    BEFORE UPDATE OR DELETE ON billing_usageentry
    FOR EACH ROW EXECUTE FUNCTION billing_usage_is_append_only();
"""

REVERSE_SQL = """
DROP TRIGGER IF EXISTS billing_usage_append_only ON billing_usageentry;
DROP FUNCTION IF EXISTS billing_usage_is_append_only();
"""

PRICES_FILE = Path(__file__).resolve().parent.parent / "data" / "model_prices.json"


def load_prices(apps, schema_editor):
    ModelPrice = apps.get_model("billing", "ModelPrice")
    data = json.loads(PRICES_FILE.read_text())
    effective_from = parse_datetime(data["effective_from"])
    for row in data["prices"]:
        ModelPrice.objects.get_or_create(
            provider=row["provider"],
            model=row["model"],
            effective_from=effective_from,
            defaults={
                "input_per_mtok": Decimal(row["input"]),
                "cached_input_per_mtok": Decimal(row["cached_input"]),
                "output_per_mtok": Decimal(row["output"]),
            },
        )


class Migration(migrations.Migration):
    """The ledger refuses UPDATE and DELETE in the database too; prices are seeded from data/."""

    dependencies = [("billing", "0001_initial")]
    operations = [
        migrations.RunSQL(APPEND_ONLY_SQL, REVERSE_SQL),
        migrations.RunPython(load_prices, migrations.RunPython.noop),
    ]
