"""``manage.py backup --target s3://...`` and ``manage.py restore s3://...`` on the real
PostgreSQL and the S3 server (moto), in S3 mode (the report store is the bucket's
``reports/`` prefix, as in the compose stack): back up a database with a signed report,
keep two, refuse a restore over data, drop the database and the report objects, dry run,
restore, compare every table row for row and every report object byte for byte."""

from __future__ import annotations

import hashlib
import json
import os

import psycopg
import pytest

from .deploy_support import fresh_postgres_database, postgres_server_url
from .test_deploy_backup import SEED, _manage, _tables

pytestmark = pytest.mark.e2e

PREFIX = "deploy-backups/"


def _objects(server, prefix: str) -> dict[str, str]:
    client = server.client()
    return {
        key: hashlib.sha256(
            client.get_object(Bucket=server.bucket, Key=key)["Body"].read()
        ).hexdigest()
        for key in server.keys(prefix)
    }


def _delete(server, prefix: str) -> None:
    client = server.client()
    for key in server.keys(prefix):
        client.delete_object(Bucket=server.bucket, Key=key)


def test_backup_to_the_bucket_drop_restore_gives_back_every_table_and_report(tmp_path, s3_server):
    _delete(s3_server, "reports/")
    _delete(s3_server, PREFIX)
    with fresh_postgres_database("backup_bucket") as database_url:
        name = database_url.rsplit("/", 1)[1]
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DJANGO_SETTINGS_MODULE": "relaypacs.settings.dev",
            "DATABASE_URL": database_url,
            "DATA_DIR": str(tmp_path / "data"),
            **s3_server.env(),
        }
        _manage(env, "migrate_locked", "--verbosity", "0")
        _manage(env, "shell", "-c", SEED)
        before_tables, before_reports = _tables(database_url), _objects(s3_server, "reports/")
        assert any(key.endswith(".pdf") for key in before_reports), before_reports
        assert before_tables["reports_report"], "the seed made no report"

        target = f"s3://{s3_server.bucket}/{PREFIX}"
        written = [
            _manage(env, "backup", "--target", target, "--keep", "2").stdout.strip()
            for _ in range(3)
        ]
        backup = written[-1].rsplit(" ", 1)[1]
        assert backup.startswith(f"{target}relaypacs-backup-")
        stored = s3_server.keys(PREFIX)
        kept = sorted({key[len(PREFIX) :].split("/", 1)[0] for key in stored})
        assert kept == sorted(line.rsplit("/", 1)[1] for line in written[1:])
        listed = _manage(env, "backup", "--target", target, "--list").stdout.split()
        assert listed == [line.rsplit(" ", 1)[1] for line in written[1:]]
        backup_prefix = backup.split("/", 3)[3]  # s3://<bucket>/<this>
        manifest = json.loads(
            s3_server.client()
            .get_object(Bucket=s3_server.bucket, Key=f"{backup_prefix}/manifest.json")["Body"]
            .read()
        )
        assert manifest["engine"] == "postgresql" and manifest["report_store"] == "s3"
        assert sorted(manifest["report_files"]) == sorted(
            key[len("reports/") :] for key in before_reports
        )
        assert not s3_server.multipart_uploads(PREFIX)
        # Nothing of the backup on the node's disk.
        leftovers = [
            p
            for p in (tmp_path / "data").rglob("*")
            if "relaypacs-backup" in p.name or "relaypacs-scratch" in p.name
        ]
        assert not leftovers, leftovers

        refused = _manage(env, "restore", backup, check=False)
        assert refused.returncode != 0
        assert "The target is not empty" in refused.stderr
        assert "Nothing was restored" in refused.stderr

        # Lose everything: the database and the report objects.
        admin = postgres_server_url().replace("postgres://", "postgresql://")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        _delete(s3_server, "reports/")

        dry = _manage(env, "restore", backup, "--dry-run")
        assert "a restore would go ahead" in dry.stdout
        assert _tables(database_url) == {}
        assert _objects(s3_server, "reports/") == {}
        log_start = s3_server.log_path.stat().st_size
        restored = _manage(env, "restore", backup)
        assert "No upload was under way at backup time." in restored.stdout
        # Each file of the backup was read from the bucket once (downloaded, checked, then
        # restored from that checked copy), and the copy is gone.
        with s3_server.log_path.open("rb") as log:
            log.seek(log_start)
            requests = log.read().decode(errors="replace")
        for name in manifest["files"]:
            gets = f'"GET /{s3_server.bucket}/{backup_prefix}/{name} '
            assert requests.count(gets) == 1, (name, requests)
        assert not list((tmp_path / "data").glob(".relaypacs-scratch-*"))
        assert _tables(database_url) == before_tables
        assert _objects(s3_server, "reports/") == before_reports

        # A damaged object in the bucket is caught by the dry run, before anything changes.
        s3_server.client().put_object(
            Bucket=s3_server.bucket, Key=f"{backup_prefix}/reports.tar", Body=b"not a tar"
        )
        damaged = _manage(env, "restore", backup, "--dry-run", check=False)
        assert damaged.returncode != 0
        assert "The backup's reports.tar is missing or differs" in damaged.stderr
    _delete(s3_server, PREFIX)
    _delete(s3_server, "reports/")


def _sqlite_tables(path) -> dict[str, list[tuple[object, ...]]]:
    import sqlite3

    with sqlite3.connect(path) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        return {
            name: sorted((tuple(r) for r in conn.execute(f'SELECT * FROM "{name}"')), key=repr)
            for name in names
        }


def test_the_embedded_default_backs_up_into_a_bucket_and_restores_from_it(tmp_path, s3_server):
    """SQLite (`make run`'s database) with local report storage, into a bucket and back
    into a new DATA_DIR."""
    prefix = "sqlite-backups/"
    _delete(s3_server, prefix)
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DJANGO_SETTINGS_MODULE": "relaypacs.settings.dev",
        **{k: v for k, v in s3_server.env().items() if k != "UPLOAD_STORAGE"},
    }
    old = {**base, "DATA_DIR": str(tmp_path / "old")}
    _manage(old, "migrate", "--verbosity", "0")
    _manage(old, "shell", "-c", SEED)
    target = f"s3://{s3_server.bucket}/{prefix}"
    backup = _manage(old, "backup", "--target", target).stdout.strip().rsplit(" ", 1)[1]
    assert s3_server.keys(f"{backup.split('/', 3)[3]}/database.sqlite3")
    leftovers = [
        p
        for p in (tmp_path / "old").rglob("*")
        if "relaypacs-backup" in p.name or "relaypacs-scratch" in p.name
    ]
    assert not leftovers, leftovers

    new = {**base, "DATA_DIR": str(tmp_path / "new")}
    assert "a restore would go ahead" in _manage(new, "restore", backup, "--dry-run").stdout
    _manage(new, "restore", backup)
    before = _sqlite_tables(tmp_path / "old" / "relaypacs.sqlite3")
    assert before["reports_report"]
    assert _sqlite_tables(tmp_path / "new" / "relaypacs.sqlite3") == before
    old_reports = tmp_path / "old" / "reports"
    new_reports = tmp_path / "new" / "reports"
    assert {
        p.relative_to(old_reports): p.read_bytes() for p in old_reports.rglob("*") if p.is_file()
    } == {p.relative_to(new_reports): p.read_bytes() for p in new_reports.rglob("*") if p.is_file()}
    _delete(s3_server, prefix)
