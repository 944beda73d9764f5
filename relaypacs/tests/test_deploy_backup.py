"""``manage.py backup`` and ``manage.py restore`` on the real PostgreSQL: back up a database
with a signed report, drop it and the report store, restore, compare every table and
file, and the product serves the restored report's PDF."""

from __future__ import annotations

import hashlib
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
