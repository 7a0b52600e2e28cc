from django.db import migrations

SQL = """
CREATE FUNCTION prompts_version_is_immutable() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'prompt versions are immutable (% refused on prompts_promptversion)', TG_OP
        USING ERRCODE = 'integrity_constraint_violation';
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER prompts_version_immutable
    BEFORE UPDATE OR DELETE ON prompts_promptversion
    FOR EACH ROW EXECUTE FUNCTION prompts_version_is_immutable();
"""

REVERSE_SQL = """
DROP TRIGGER IF EXISTS prompts_version_immutable ON prompts_promptversion;
DROP FUNCTION IF EXISTS prompts_version_is_immutable();
"""


class Migration(migrations.Migration):
    """Versions are immutable in the database too, whatever writes to it (raw SQL, other services)."""

    dependencies = [("prompts", "0001_initial")]
    operations = [migrations.RunSQL(SQL, REVERSE_SQL)]
