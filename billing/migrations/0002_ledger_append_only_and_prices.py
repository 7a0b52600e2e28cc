from django.db import migrations

from billing.pricing_data import seed_prices

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


def load_prices(apps, schema_editor):
    seed_prices(apps.get_model("billing", "ModelPrice"))


class Migration(migrations.Migration):
    """The ledger refuses UPDATE and DELETE in the database too; prices are seeded from data/."""

    dependencies = [("billing", "0001_initial")]
    operations = [
        migrations.RunSQL(APPEND_ONLY_SQL, REVERSE_SQL),
        migrations.RunPython(load_prices, migrations.RunPython.noop),
    ]
