"""``manage.py backup`` and ``manage.py restore`` on the real PostgreSQL: back up a database
with a signed report, drop it and the report store, restore, compare every table and
file, and the product serves the restored report's PDF."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import requests

from uploads.tests.helpers import free_port

from .deploy_support import REPO, fresh_postgres_database, postgres_server_url

pytestmark = pytest.mark.e2e

PASSWORD = "a long reader password"
SEED = """
from accounts.models import Role
from accounts.tests.factories import UserFactory
from reports.services import pdf, transitions
from reports.tests.factories import ReportFactory

reader = UserFactory(username="reader", role=Role.RADIOLOGIST, full_name="Dr Ada Reader")
reader.set_password(READER_PASSWORD)
reader.save()
report = ReportFactory()
transitions.report_claim(report_id=report.pk, actor=reader)
version = transitions.report_sign(
    report_id=report.pk, actor=reader, findings="Clear lungs.", impression="Nothing acute."
)
pdf.report_version_render(version_id=version.pk)
print("REPORT", report.pk)
""".replace("READER_PASSWORD", repr(PASSWORD))

UPLOAD = """
from accounts.tests.factories import UserFactory
from uploads.models import UploadSession

UploadSession.objects.create(
    owner=UserFactory(), total_size=10, chunk_size=10, total_chunks=1
)
"""


def _manage(
    env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert done.returncode == 0, (
            f"manage.py {' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done


def _tables(database_url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every table of the database with all its rows, in a stable order."""
    with psycopg.connect(database_url.replace("postgres://", "postgresql://")) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
            )
        ]
        return {
            name: sorted((tuple(r) for r in conn.execute(f'SELECT * FROM "{name}"')), key=repr)
            for name in names
        }


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_backup_drop_restore_gives_back_every_table_and_report(tmp_path):
    with fresh_postgres_database("h8_backup") as database_url:
        name = database_url.rsplit("/", 1)[1]
        reports_dir = tmp_path / "data" / "reports"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DJANGO_SETTINGS_MODULE": "relaypacs.settings.dev",
            "DATABASE_URL": database_url,
            "DATA_DIR": str(tmp_path / "data"),
            "REPORT_STORAGE_DIR": str(reports_dir),
        }
        _manage(env, "migrate_locked", "--verbosity", "0")
        seeded = _manage(env, "shell", "-c", SEED)
        report_id = int(seeded.stdout.split("REPORT", 1)[1].split()[0])
        before_tables, before_files = _tables(database_url), _files(reports_dir)
        assert any(path.endswith(".pdf") for path in before_files), before_files
        assert before_tables["reports_report"], "the seed made no report"

        target = tmp_path / "backups"
        for _ in range(3):
            _manage(env, "backup", "--target", str(target), "--keep", "2")
        backups = sorted(p for p in target.iterdir())
        assert len(backups) == 2 and all(p.name.startswith("relaypacs-backup-") for p in backups)
        backup = backups[-1]
        # Patient data: readable by the backing-up user only.
        assert backup.stat().st_mode & 0o777 == 0o700
        assert all(f.stat().st_mode & 0o077 == 0 for f in backup.iterdir()), [
            (f.name, oct(f.stat().st_mode)) for f in backup.iterdir()
        ]

        # A restore over existing data is refused and changes nothing.
        refused = _manage(env, "restore", str(backup), check=False)
        assert refused.returncode != 0
        assert "The target is not empty" in refused.stderr and "Nothing was restored" in (
            refused.stderr
        )

        # Lose everything: the database and the report store.
        admin = postgres_server_url().replace("postgres://", "postgresql://")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        shutil.rmtree(reports_dir)

        dry = _manage(env, "restore", str(backup), "--dry-run")
        assert "a restore would go ahead" in dry.stdout
        assert _tables(database_url) == {}  # the dry run changed nothing
        _manage(env, "restore", str(backup))
        assert _tables(database_url) == before_tables
        assert _files(reports_dir) == before_files

        # The product serves the restored report.
        port = free_port()
        with open(tmp_path / "web.log", "wb") as log:
            web = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "relaypacs.asgi:application",
                    "--port",
                    str(port),
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                assert web.poll() is None, (tmp_path / "web.log").read_text()
                try:
                    login = requests.post(
                        f"{base}/api/v1/auth/login",
                        json={"username": "reader", "password": PASSWORD},
                        timeout=10,
                    )
                    break
                except requests.ConnectionError:
                    assert time.monotonic() < deadline, (tmp_path / "web.log").read_text()
                    time.sleep(0.3)
            assert login.status_code == 200, login.text
            download = requests.get(
                f"{base}/api/v1/reports/{report_id}/download",
                headers={"Authorization": f"Bearer {login.json()['access']}"},
                timeout=60,
            )
            assert download.status_code == 200, download.text
            stored = next(p for p in reports_dir.rglob("*.pdf"))
            assert download.content == stored.read_bytes()
            assert download.content.startswith(b"%PDF")
        finally:
            os.killpg(web.pid, signal.SIGTERM)
            web.wait(timeout=30)


def _marker(database_url: str) -> bool:
    with psycopg.connect(database_url.replace("postgres://", "postgresql://")) as conn:
        return bool(
            conn.execute(
                "SELECT 1 FROM pg_tables WHERE schemaname = 'public' AND tablename = %s",
                ["relaypacs_restore_unfinished"],
            ).fetchone()
        )


def test_a_restore_that_fails_half_way_says_so_and_running_it_again_redoes_it(tmp_path):
    """The database restored, the report store half written, then a failure: the restore
    says what happened and what to do, and the next `restore` removes what it wrote and
    starts over (refusing while the report store holds a file it did not write); one
    killed with SIGKILL half way through that is redone in turn."""
    with fresh_postgres_database("h3_redo") as database_url:
        name = database_url.rsplit("/", 1)[1]
        reports_dir = tmp_path / "data" / "reports"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DJANGO_SETTINGS_MODULE": "relaypacs.settings.dev",
            "DATABASE_URL": database_url,
            "DATA_DIR": str(tmp_path / "data"),
            "REPORT_STORAGE_DIR": str(reports_dir),
        }
        _manage(env, "migrate_locked", "--verbosity", "0")
        _manage(env, "shell", "-c", SEED)
        # A second report store file, after the PDF in the tar's (sorted) order.
        (reports_dir / "zz").mkdir()
        (reports_dir / "zz" / "letterhead.png").write_bytes(b"\x89PNG a letterhead")
        before_tables, before_files = _tables(database_url), _files(reports_dir)
        good = Path(
            _manage(env, "backup", "--target", str(tmp_path / "backups")).stdout.split()[-1]
        )
        # The same backup with the last report file's recorded sum wrong: restoring it
        # gets through the database and the first report files, then stops.
        bad = tmp_path / "bad" / good.name
        shutil.copytree(good, bad)
        manifest = json.loads((bad / "manifest.json").read_text())
        manifest["report_files"]["zz/letterhead.png"] = "0" * 64
        (bad / "manifest.json").write_text(json.dumps(manifest))

        admin = postgres_server_url().replace("postgres://", "postgresql://")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        shutil.rmtree(reports_dir)

        failed = _manage(env, "restore", str(bad), check=False)
        assert failed.returncode != 0
        assert f"The restore of {bad} stopped part way" in failed.stderr
        assert "marked as an unfinished restore" in failed.stderr
        assert "run `manage.py restore` again" in failed.stderr
        assert "Traceback" not in failed.stderr
        half = _tables(database_url)
        assert half["reports_report"] and _marker(database_url)
        assert _files(reports_dir) and _files(reports_dir) != before_files
        # Backing up a half-restored database would keep part of a backup as whole.
        backup_refused = _manage(env, "backup", "--target", str(tmp_path / "backups"), check=False)
        assert backup_refused.returncode != 0
        assert "did not finish" in backup_refused.stderr
        assert "so no backup was made" in backup_refused.stderr
        assert len(list((tmp_path / "backups").iterdir())) == 1

        # A file the unfinished restore did not write: nothing is removed.
        (reports_dir / "other.pdf").write_bytes(b"%PDF someone else's")
        refused = _manage(env, "restore", str(good), check=False)
        assert refused.returncode != 0
        assert "did not finish" in refused.stderr
        assert "1 files that restore did not write" in refused.stderr
        assert _tables(database_url) == half
        (reports_dir / "other.pdf").unlink()

        # A redo killed half way (SIGKILL while it waits for a lock on the marker, after
        # it removed the report files the failed restore wrote, in the transaction that
        # drops its tables): still that unfinished restore, its tables all there.
        url = database_url.replace("postgres://", "postgresql://")
        # The activity view is read once per transaction: watched from outside the holder's.
        with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as watcher:
            holder.execute("LOCK TABLE relaypacs_restore_unfinished IN ACCESS SHARE MODE")
            killed = subprocess.Popen(
                [sys.executable, "manage.py", "restore", str(good)],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 120
            while True:
                waiting = watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                    "AND wait_event_type = 'Lock'",
                    [name],
                ).fetchall()
                if waiting:
                    break
                assert killed.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            os.killpg(killed.pid, signal.SIGKILL)
            killed.wait(timeout=30)
            # Its server side ends as PostgreSQL notices the client gone.
            watcher.execute("SELECT pg_terminate_backend(%s)", [waiting[0][0]])
            holder.rollback()
        assert _tables(database_url) == half
        assert _files(reports_dir) == {}

        dry = _manage(env, "restore", str(good), "--dry-run")
        assert f"A restore of {bad} started at" in dry.stdout
        assert "A restore would remove what it wrote and start over." in dry.stdout

        redone = _manage(env, "restore", str(good))
        assert f"A restore of {bad} started at" in redone.stdout
        assert "What it wrote was removed before this restore." in redone.stdout
        assert not _marker(database_url)
        assert _tables(database_url) == before_tables
        assert _files(reports_dir) == before_files
        # No scratch folder of the restore is left in DATA_DIR.
        assert not list((tmp_path / "data").glob(".relaypacs-scratch-*"))


def test_a_restore_claims_the_target_and_a_product_never_runs_on_half_a_restore(tmp_path):
    """A table created in the target while the restore checks the backup (here while the
    restore waits for the claim's lock, which the test holds): the restore refuses and
    leaves that table alone. A database holding the marker of an unfinished restore:
    `migrate_locked` (what `serve` runs) refuses to start on it, and the redo refuses to
    remove it when uploads were made after that restore began."""
    with fresh_postgres_database("h3_claim") as database_url:
        name = database_url.rsplit("/", 1)[1]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DJANGO_SETTINGS_MODULE": "relaypacs.settings.dev",
            "DATABASE_URL": database_url,
            "DATA_DIR": str(tmp_path / "data"),
            "REPORT_STORAGE_DIR": str(tmp_path / "data" / "reports"),
        }
        _manage(env, "migrate_locked", "--verbosity", "0")
        good = Path(
            _manage(env, "backup", "--target", str(tmp_path / "backups")).stdout.split()[-1]
        )
        admin = postgres_server_url().replace("postgres://", "postgresql://")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        url = database_url.replace("postgres://", "postgresql://")
        with psycopg.connect(url, autocommit=True) as holder:
            holder.execute("SELECT pg_advisory_lock(%s)", [0x52504143_0001])
            restore = subprocess.Popen(
                [sys.executable, "manage.py", "restore", str(good)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            deadline = time.monotonic() + 120
            while not holder.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND wait_event = 'advisory'",
                [name],
            ).fetchone():
                assert restore.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            # A product started meanwhile: its first table, and a row in it.
            holder.execute("CREATE TABLE someone_elses (value TEXT)")
            holder.execute("INSERT INTO someone_elses VALUES ('live data')")
            holder.execute("SELECT pg_advisory_unlock(%s)", [0x52504143_0001])
            _, stderr = restore.communicate(timeout=120)
        assert restore.returncode != 0
        assert "The target database changed while the backup was being checked" in stderr
        assert "it now has 1 tables. Nothing was restored." in stderr
        assert "Traceback" not in stderr
        assert _tables(database_url) == {"someone_elses": [("live data",)]}

        # The restore done, then marked unfinished again by hand, with an upload made
        # after it "began": nothing starts on it and the redo removes nothing.
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        _manage(env, "restore", str(good))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE relaypacs_restore_unfinished "
                "(backup TEXT NOT NULL, started_at TEXT NOT NULL, report_names TEXT NOT NULL)"
            )
            conn.execute(
                "INSERT INTO relaypacs_restore_unfinished VALUES (%s, %s, '[]')",
                [str(good), "2000-01-01T00:00:00+00:00"],
            )
        for command in (["migrate_locked"], ["check", "--database", "default"]):
            refused = _manage(env, *command, check=False)
            assert refused.returncode != 0, command
            assert (
                "A restore of this database did not finish: run manage.py restore again "
                "before starting RelayPACS." in refused.stderr
            ), command
        _manage(env, "shell", "-c", UPLOAD)
        before = _tables(database_url)
        redo = _manage(env, "restore", str(good), check=False)
        assert redo.returncode != 0
        assert "The database also holds 1 uploads made after it started" in redo.stderr
        assert "Traceback" not in redo.stderr
        assert _tables(database_url) == before
