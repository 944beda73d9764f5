"""Make the next report synchronisation cycle try again the PACS report objects it gave up
on (after the outage or bug that made them fail was fixed)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from reports.services.sync import reports_sync_retry


class Command(BaseCommand):
    help = (
        "Try again, at the next synchronisation cycle, the PACS report objects that were "
        "given up (outcome gave_up); of one report with --report."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--report", type=int, default=None, help="A report's id.")

    def handle(self, *args: Any, **options: Any) -> None:
        reset = reports_sync_retry(report_id=options["report"])
        self.stdout.write(
            f"{reset} given-up report object(s) will be tried again at the next cycle."
        )
