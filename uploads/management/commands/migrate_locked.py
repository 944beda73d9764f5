"""``manage.py migrate_locked``: ``migrate`` that several nodes may run at the same moment.

On PostgreSQL it holds a session-level advisory lock while it migrates, so when several
containers or machines start together one migrates and the others wait, then find nothing
left to do. ``migrate`` alone would let two of them create the same table at once and one
would fail. On SQLite (one machine, the embedded default) the database file's own lock is
enough and it is plain ``migrate``.
"""

from __future__ import annotations

import fcntl
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.checks import Tags
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections

logger = logging.getLogger(__name__)

# Any fixed 64-bit number that nothing else in the database uses as an advisory lock:
# "RelayPACS migrate" in the letters' ASCII codes, cut to fit.
MIGRATE_LOCK_ID = 0x52_50_41_43_53_4D_49_47
# In DATA_DIR: the lock a restore into SQLite holds from start to end (uploads/management/
# backups.py); migrating takes it too.
RESTORE_LOCK_FILE = ".restore.lock"
# Long enough for the slowest migration of a large database on another node; the waiting
# node then stops with a sentence instead of hanging a deployment for ever.
LOCK_WAIT_SECONDS = 900
# How often a waiting node tries the lock again.
LOCK_POLL_SECONDS = 0.5


class Command(BaseCommand):
    help = (
        "Apply database migrations, one node at a time: on PostgreSQL an advisory lock "
        "makes nodes that start together wait for each other."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS)
        parser.add_argument(
            "--lock-wait",
            type=float,
            default=LOCK_WAIT_SECONDS,
            help="Seconds to wait for another node's migration before giving up.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        database = options["database"]
        verbosity = options["verbosity"]
        connection = connections[database]
        if connection.vendor != "postgresql":
            # A restore holds this lock from its first write to its last: a start while
            # it runs stops with a sentence instead of migrating half a database.
            with _sqlite_restore_excluded():
                self._check_then_migrate(database=database, verbosity=verbosity)
            return
        with connection.cursor() as cursor:
            deadline = time.monotonic() + options["lock_wait"]
            waited = False
            while True:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [MIGRATE_LOCK_ID])
                if cursor.fetchone()[0]:
                    break
                if time.monotonic() > deadline:
                    raise CommandError(
                        f"Another node has been migrating the database for more than "
                        f"{options['lock_wait']:.0f} seconds. Check that node's log; start "
                        "this one again once its migration has finished."
                    )
                if not waited and verbosity:
                    self.stdout.write("Another node is migrating the database; waiting for it.")
                waited = True
                time.sleep(LOCK_POLL_SECONDS)
            try:
                # Under the lock, which a restore's claim of the database also takes: a
                # restore that began before is seen by the check (its marker), one that
                # begins later waits for this migration and then finds tables.
                self._check_then_migrate(database=database, verbosity=verbosity)
            finally:
                try:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [MIGRATE_LOCK_ID])
                except Exception as exc:  # noqa: BLE001
                    # The migration's own error is the one to report; a session that
                    # ended has released its lock anyway.
                    logger.warning("the migration lock was not released: %s", type(exc).__name__)

    def _check_then_migrate(self, *, database: str, verbosity: int) -> None:
        # `migrate` called from code (serve) skips the system checks, and without a
        # database none of the database ones run: those that guard the data (a restore
        # that did not finish: uploads.E003) run here, before anything is migrated.
        self.check(databases=[database], tags=[Tags.database])
        call_command("migrate", database=database, interactive=False, verbosity=verbosity)


@contextmanager
def _sqlite_restore_excluded() -> Iterator[None]:
    """DATA_DIR/.restore.lock (the lock a restore into SQLite holds throughout) held while
    migrating; CommandError at once when a restore holds it."""
    path = Path(settings.DATA_DIR) / RESTORE_LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CommandError(
                "A restore into this server's database is running. Start RelayPACS again "
                "once it has finished."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
