from django.db import migrations

# chat_message's foreign key to chat_conversation, re-created under its own name with ON DELETE
# __ACTION__, deferrable as Django makes it.
REPLACE_FOREIGN_KEY = """
DO $$
DECLARE
    fk text;
BEGIN
    SELECT conname INTO STRICT fk FROM pg_constraint
     WHERE conrelid = 'chat_message'::regclass AND contype = 'f'
       AND confrelid = 'chat_conversation'::regclass;
    EXECUTE format('ALTER TABLE chat_message DROP CONSTRAINT %I', fk);
    EXECUTE format(
        'ALTER TABLE chat_message ADD CONSTRAINT %I FOREIGN KEY (conversation_id) '
        'REFERENCES chat_conversation (id) ON DELETE __ACTION__ DEFERRABLE INITIALLY DEFERRED', fk
    );
END
$$;
"""


class Migration(migrations.Migration):
    """Deleting a conversation removes its messages in the database too (Django 5.2 has no
    db_on_delete). Django's own delete collects the messages before it deletes the conversation; a
    turn committed in between (its transaction held the row, so the DELETE waited for it) would be
    left referencing nothing and fail that delete at commit. The admin's and a tenant's deletes go
    that way; conversation_delete also locks the row first. An AlterField of Message.conversation
    would re-create the key without the cascade: run this again after one."""

    dependencies = [("chat", "0004_semantic_cache_instructions")]
    operations = [
        migrations.RunSQL(
            REPLACE_FOREIGN_KEY.replace("__ACTION__", "CASCADE"),
            REPLACE_FOREIGN_KEY.replace("__ACTION__", "NO ACTION"),
        )
    ]
