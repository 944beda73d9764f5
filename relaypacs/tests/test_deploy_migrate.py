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
            deadline = time.monotonic() + 120
            others = (
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            while not (other_node.execute(others).fetchone() or (0,))[0]:
                assert waiting.poll() is None, waiting.communicate()[0]
                assert time.monotonic() < deadline, "the node never connected"
                time.sleep(0.2)
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
