"""``manage.py reconcile_uploads``: after a restore, match the uploads under way with the
bytes the upload storage still holds (``uploads.services.recovery``). ``restore`` runs it
itself; run it by hand when the restore said so (a backup of an older release, migrated
since). Idempotent."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from relaypacs.errors import ApplicationError
from uploads.services.recovery import uploads_reconcile
from uploads.storage import StorageUnavailable


class Command(BaseCommand):
    help = "Match uploads under way with the bytes the upload storage holds (after a restore)."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            summary = uploads_reconcile()
        except (ApplicationError, StorageUnavailable) as exc:
            message = exc.message if isinstance(exc, ApplicationError) else str(exc)
            raise CommandError(
                f"The upload storage could not be read ({message}). Nothing was changed "
                "for the uploads not yet checked; run this again once it answers."
            ) from exc
        self.stdout.write(summary.sentence())
