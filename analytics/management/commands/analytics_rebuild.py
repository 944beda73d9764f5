"""``manage.py analytics_rebuild``: recompute the upload statistics' rollups from scratch
(a backfill after installing analytics on a database with uploads, or a repair)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from analytics.services import rollups_current, rollups_rebuild, rollups_recomputed


class Command(BaseCommand):
    help = "Recompute the upload statistics' rollups from the uploads and their recorded events."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--check",
            action="store_true",
            help="Only compare the stored rollups with a recomputation; exit 1 if they differ.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["check"]:
            expected, _ = rollups_recomputed()
            current = rollups_current()
            differing = {
                k for k in expected.keys() | current.keys() if expected.get(k) != current.get(k)
            }
            if differing:
                self.stderr.write(
                    f"{len(differing)} rollup rows differ from a recomputation: run "
                    "`manage.py analytics_rebuild` to rewrite them."
                )
                raise SystemExit(1)
            self.stdout.write(f"The {len(current)} rollup rows equal a recomputation.")
            return
        rows = rollups_rebuild()
        self.stdout.write(f"Rollups rebuilt: {rows} rows.")
