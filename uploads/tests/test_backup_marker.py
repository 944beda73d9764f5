"""The marker of an unfinished restore (``RESTORE_MARKER_TABLE``) is never part of a
backup: a restore that begins while a backup runs (after its check) is left out of the
PostgreSQL dump and of the SQLite copy. On SQLite, one restore at a time
(DATA_DIR/.restore.lock)."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from django.db import connection

from uploads.management import backups


@pytest.mark.django_db(transaction=True)
def test_the_postgresql_dump_leaves_the_restore_marker_out(tmp_path: Path) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {backups.RESTORE_MARKER_TABLE} (backup TEXT)")
    try:
        db = backups._database()
        args, env = backups._pg_args(db)
        dump = tmp_path / "database.dump"
        backups._run(backups._pg_dump_argv(db, args, file=dump), env, "backed up")
        listing = subprocess.run(  # noqa: S603
            ["pg_restore", "--list", str(dump)],  # noqa: S607
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {backups.RESTORE_MARKER_TABLE}")
    assert " uploads_uploadsession " in listing
    assert backups.RESTORE_MARKER_TABLE not in listing


def test_the_sqlite_copy_leaves_the_restore_marker_out(tmp_path: Path) -> None:
    source = tmp_path / "db.sqlite3"
    with sqlite3.connect(source) as live:
        live.execute("CREATE TABLE patients (name TEXT)")
        live.execute("INSERT INTO patients VALUES ('kept')")
        live.execute(f"CREATE TABLE {backups.RESTORE_MARKER_TABLE} (backup TEXT)")
    live.close()
    copy = tmp_path / "copy.sqlite3"
    backups._sqlite_backup_copy(source=str(source), target=copy)
    read = sqlite3.connect(copy)
    try:
        tables = {row[0] for row in read.execute("SELECT name FROM sqlite_master")}
        rows = read.execute("SELECT name FROM patients").fetchall()
    finally:
        read.close()
    assert tables == {"patients"}
    assert rows == [("kept",)]
    # The live database keeps its marker: only the copy is changed.
    with sqlite3.connect(source) as live:
        names = {row[0] for row in live.execute("SELECT name FROM sqlite_master")}
    live.close()
    assert backups.RESTORE_MARKER_TABLE in names


def test_on_sqlite_a_second_restore_stops_while_one_holds_the_restore_lock(
    tmp_path: Path, settings
) -> None:
    import fcntl

    from relaypacs.errors import ApplicationError

    settings.DATA_DIR = str(tmp_path)
    with backups._sqlite_restore_lock():
        # Another process's restore: its own open file description of the lock file.
        with (
            (tmp_path / ".restore.lock").open("a") as other,
            pytest.raises(BlockingIOError),
        ):
            fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ApplicationError) as refused, backups._sqlite_restore_lock():
            pass
    assert refused.value.code == "restore_running"
    assert "Another restore of this server is running" in refused.value.message
    with backups._sqlite_restore_lock():  # released once the restore ends
        pass
