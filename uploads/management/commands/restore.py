"""``manage.py restore <backup>`` (a folder, or ``s3://bucket/prefix/relaypacs-backup-<time>``):
into an empty database and report store only, or over what a restore cut short left
(removed first: run the same command again after a failed restore); ``--dry-run`` checks
the backup and the target and changes nothing. Uploads under way at backup time are reconciled afterwards
(``uploads.services.recovery``)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from relaypacs.errors import ApplicationError
from uploads.management.backups import backup_restore, restore_plan


class Command(BaseCommand):
    help = "Restore a backup made by `manage.py backup` into an empty database and report store."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "backup",
            help="The backup: its folder, or s3://bucket/prefix/relaypacs-backup-<time>.",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="Check the backup and the target, and say what would happen; change nothing.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        backup = str(options["backup"])
        try:
            if options["dry_run"]:
                plan = restore_plan(backup=backup)
                empty = not plan.database_tables and not plan.report_files
                if plan.unfinished_restore is not None:
                    verdict = (
                        f"{plan.unfinished_restore} A restore would remove what it wrote "
                        "and start over."
                    )
                elif empty:
                    verdict = "The target is empty: a restore would go ahead."
                else:
                    verdict = (
                        f"The target is not empty ({plan.database_tables} tables, "
                        f"{plan.report_files} report files): a restore would be refused."
                    )
                self.stdout.write(
                    f"The backup of {plan.created_at} ({plan.engine}) is whole. {verdict}"
                )
                return
            outcome = backup_restore(backup=backup)
        except ApplicationError as exc:
            raise CommandError(f"{exc.message} {exc.hint}") from exc
        if outcome.redone is not None:
            self.stdout.write(
                f"{outcome.redone.sentence()} What it wrote was removed before this restore."
            )
        self.stdout.write(f"Restored the backup of {outcome.plan.created_at} from {backup}.")
        if outcome.uploads is None:
            self.stdout.write(
                "The backup is of an older release: run `manage.py migrate_locked`, then "
                "`manage.py reconcile_uploads` before starting web and worker, so that "
                "uploads under way at backup time ask again for the chunks they lost."
            )
        else:
            self.stdout.write(outcome.uploads.sentence())
