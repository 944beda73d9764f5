"""``manage.py backup``: the database and the report store into a folder, keeping the
newest N (uploads.management.backups says what is inside and why upload bytes are not)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from relaypacs.errors import ApplicationError
from uploads.management.backups import backup_create

# A week of daily backups.
DEFAULT_KEEP = 7


class Command(BaseCommand):
    help = "Back up the database and the report store into a folder, keeping the newest N."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--target",
            default=str(getattr(settings, "BACKUP_DIR", Path(settings.DATA_DIR) / "backups")),
            help="Folder that holds the backups (default DATA_DIR/backups).",
        )
        parser.add_argument(
            "--keep",
            type=int,
            default=int(getattr(settings, "BACKUP_KEEP", DEFAULT_KEEP)),
            help="How many backups to keep; older ones are removed.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            folder = backup_create(target=Path(options["target"]), keep=options["keep"])
        except ApplicationError as exc:
            raise CommandError(f"{exc.message} {exc.hint}") from exc
        self.stdout.write(f"Backup written to {folder}")
