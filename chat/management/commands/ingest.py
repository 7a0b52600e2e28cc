from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from chat.documents import EXTENSION_TYPES, content_type_for, document_create, document_ingest
from chat.models import DocumentStatus
from tenants.errors import ApiError, DomainError
from tenants.models import Tenant


def files_under(paths: list[str]) -> list[Path]:
    """The given files, and the supported files (.txt .md .html .pdf) anywhere under given directories."""
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSION_TYPES)
            )
        elif path.is_file():
            found.append(path)
        else:
            raise CommandError(f"No such file or directory: {name}")
    return found


class Command(BaseCommand):
    help = (
        "Upload and ingest documents for a tenant from files or directories, here and now (no Celery), "
        "with a progress bar. Identical content already uploaded is not stored twice."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant_slug")
        parser.add_argument("paths", nargs="+", metavar="PATH")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant = Tenant.objects.filter(slug=options["tenant_slug"]).first()
        if tenant is None:
            raise CommandError(f"No tenant with slug '{options['tenant_slug']}'.")
        files = files_under(options["paths"])
        if not files:
            raise CommandError("No .txt, .md, .html or .pdf files found.")
        failures = 0
        for path in files:
            try:
                content_type = content_type_for(declared=None, filename=path.name)
                document, created = document_create(
                    tenant=tenant,
                    content=path.read_bytes(),
                    content_type=content_type,
                    filename=path.name,
                    enqueue=False,
                )
            except (DomainError, ApiError) as exc:
                failures += 1
                message = exc.message if isinstance(exc, DomainError) else exc.detail
                self.stderr.write(f"{path}: refused: {message}")
                continue
            with tqdm(desc=path.name[:40], unit="chunk", total=0, leave=False, file=self.stderr) as bar:

                def progress(embedded: int, total: int, bar: tqdm = bar) -> None:
                    bar.total = total
                    bar.update(embedded - bar.n)

                result = document_ingest(document_id=document.pk, on_progress=progress)
            if result is None or result.status != DocumentStatus.READY:
                failures += 1
                self.stderr.write(f"{path}: failed: {result.error if result else 'deleted meanwhile'}")
                continue
            note = "" if created else " (already uploaded)"
            self.stdout.write(f"{path}: {result.chunk_count} chunks, document {result.pk}{note}")
        if failures:
            raise CommandError(f"{failures} of {len(files)} file(s) were not ingested.")
