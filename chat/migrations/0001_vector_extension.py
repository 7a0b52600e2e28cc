from django.db import migrations
from pgvector.django import VectorExtension


class Migration(migrations.Migration):
    """pgvector first: RAG chunks and the semantic cache store embeddings (see /health's pgvector check)."""

    initial = True
    dependencies = []
    operations = [VectorExtension()]
