"""``manage.py migrate_locked`` on a fresh PostgreSQL database: nodes that start together
all succeed, one migrating while the others wait for its advisory lock."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from uploads.management.commands.migrate_locked import MIGRATE_LOCK_ID
from uploads.tests.product import REPO

from .deploy_support import fresh_postgres_database

pytestmark = pytest.mark.e2e

MIGRATE_SECONDS = 300


def _migrate(database_url: str, data_dir: Path) -> subprocess.Popen[str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "manage.py", "migrate_locked", "--verbosity", "1"],
        cwd=REPO,
        env={
            "PATH": "/usr/bin:/bin",
            "DJANGO_SETTINGS_MODULE": "relaypacs.settings.dev",
            "DATABASE_URL": database_url,
            "DATA_DIR": str(data_dir),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _applied(database_url: str) -> list[tuple[str, str]]:
    with psycopg.connect(database_url.replace("postgres://", "postgresql://")) as conn:
        rows = conn.execute("SELECT app, name FROM django_migrations ORDER BY app, name")
        return [(str(app), str(name)) for app, name in rows]


def _wait_until_connected(other_node: psycopg.Connection, waiting: subprocess.Popen[str]) -> None:
    """Until the migrating node has a connection to the database (it asks for the lock)."""
    deadline = time.monotonic() + 120
    others = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    while not (other_node.execute(others).fetchone() or (0,))[0]:
        assert waiting.poll() is None, waiting.communicate()[0]
        assert time.monotonic() < deadline, "the node never connected"
        time.sleep(0.2)


def test_two_nodes_migrating_a_fresh_database_at_once_both_succeed(tmp_path):
    with fresh_postgres_database("h8_migrate") as database_url:
        runs = [_migrate(database_url, tmp_path / f"node-{n}") for n in (1, 2)]
        outputs = [run.communicate(timeout=MIGRATE_SECONDS)[0] for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outputs
        applied = _applied(database_url)
        assert len(applied) == len(set(applied)) > 20  # each migration applied once
        # A third node later finds nothing to do.
        again = _migrate(database_url, tmp_path / "node-3")
        out = again.communicate(timeout=MIGRATE_SECONDS)[0]
        assert again.returncode == 0 and "No migrations to apply" in out, out
        assert _applied(database_url) == applied


def test_a_node_waits_while_another_holds_the_migration_lock(tmp_path):
    with fresh_postgres_database("h8_migrate") as database_url:
        url = database_url.replace("postgres://", "postgresql://")
        with psycopg.connect(url, autocommit=True) as other_node:
            other_node.execute("SELECT pg_advisory_lock(%s)", [MIGRATE_LOCK_ID])
            waiting = _migrate(database_url, tmp_path / "node")
            # Until the node has connected (and so asked for the lock), then a while more.
            _wait_until_connected(other_node, waiting)
            time.sleep(2)
            assert waiting.poll() is None, waiting.communicate()[0]
            tables = other_node.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchone()
            assert tables == (0,)  # nothing migrated while another node holds the lock
            other_node.execute("SELECT pg_advisory_unlock(%s)", [MIGRATE_LOCK_ID])
        out = waiting.communicate(timeout=MIGRATE_SECONDS)[0]
        assert waiting.returncode == 0, out
        assert "Another node is migrating the database; waiting for it." in out
        assert ("accounts", "0001_initial") in _applied(database_url)


def _marker_sql() -> tuple[str, str, list[str]]:
    from uploads.management.backups import _restore_marker_sql, _restore_marker_values

    _drop, create, insert = _restore_marker_sql(placeholder="%s")
    return create, insert, _restore_marker_values(backup="backup-of-the-test", report_names=[])


def test_a_restore_that_began_while_a_node_waited_stops_its_migration(tmp_path):
    """The restore check runs under the migration lock: a restore that claimed the database
    while this node waited for the lock (its marker written) is seen, nothing migrated."""
    with fresh_postgres_database("h8_migrate") as database_url:
        url = database_url.replace("postgres://", "postgresql://")
        with psycopg.connect(url, autocommit=True) as other_node:
            other_node.execute("SELECT pg_advisory_lock(%s)", [MIGRATE_LOCK_ID])
            waiting = _migrate(database_url, tmp_path / "node")
            _wait_until_connected(other_node, waiting)
            time.sleep(1)
            create, insert, values = _marker_sql()
            other_node.execute(create)
            other_node.execute(insert, values)  # a restore claimed it meanwhile
            other_node.execute("SELECT pg_advisory_unlock(%s)", [MIGRATE_LOCK_ID])
            out = waiting.communicate(timeout=MIGRATE_SECONDS)[0]
            assert waiting.returncode != 0, out
            assert "uploads.E003" in out, out
            tables = other_node.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchone()
            assert tables == (1,)  # the marker only: nothing migrated


def test_a_start_on_sqlite_while_a_restore_runs_stops_with_a_sentence(tmp_path):
    import fcntl

    data_dir = tmp_path / "node"
    data_dir.mkdir()
    with (data_dir / ".restore.lock").open("a") as restore:
        fcntl.flock(restore.fileno(), fcntl.LOCK_EX)  # as a restore into SQLite holds it
        run = subprocess.run(
            [sys.executable, "manage.py", "migrate_locked", "--verbosity", "1"],
            cwd=REPO,
            env={
                "PATH": "/usr/bin:/bin",
                "DJANGO_SETTINGS_MODULE": "relaypacs.settings.dev",
                "DATA_DIR": str(data_dir),
            },
            capture_output=True,
            text=True,
            timeout=MIGRATE_SECONDS,
        )
    assert run.returncode != 0
    assert "A restore into this server's database is running." in run.stderr, run.stderr
    assert not (data_dir / "relaypacs.sqlite3").exists() or _sqlite_tables(data_dir) == []


def _sqlite_tables(data_dir: Path) -> list[str]:
    import sqlite3

    with sqlite3.connect(data_dir / "relaypacs.sqlite3") as db:
        return [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
