"""``manage.py backup``: the database and the report store into a folder or a bucket
(``s3://bucket/prefix``), keeping the newest N (uploads.management.backups says what is
inside and why upload bytes are not). Beat runs the same daily (``BACKUP_SCHEDULE``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from relaypacs.errors import ApplicationError
from uploads.management.backups import (
    DEFAULT_KEEP,
    backup_run,
    backup_target_default,
    backups_at,
)


class Command(BaseCommand):
    help = (
        "Back up the database and the report store into a folder or s3://bucket/prefix, "
        "keeping the newest N."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--target",
            default=None,
            help="A folder or s3://bucket/prefix (default BACKUP_TARGET: DATA_DIR/backups, "
            "or s3://S3_BUCKET/backups/ when UPLOAD_STORAGE=s3).",
        )
        parser.add_argument(
            "--keep",
            type=int,
            default=int(getattr(settings, "BACKUP_KEEP", DEFAULT_KEEP)),
            help="How many backups to keep (BACKUP_KEEP, 7); older ones are removed.",
        )
        parser.add_argument(
            "--list",
            action="store_true",
            help="List the whole backups at the target, oldest first, as restore takes them.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        target = options["target"] or backup_target_default()
        try:
            if options["list"]:
                for where in backups_at(target=target):
                    self.stdout.write(where)
                return
            where = backup_run(target=target, keep=options["keep"])
        except ApplicationError as exc:
            raise CommandError(f"{exc.message} {exc.hint}") from exc
        self.stdout.write(f"Backup written to {where}")
