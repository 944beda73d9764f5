"""Backups of what RelayPACS cannot get back from elsewhere: the database and the report
store (signed reports' PDFs and letterheads, REPORT_STORAGE_DIR). Upload bytes are
temporary (delivered to the PACS, then removed) and are not backed up.

A backup is a folder ``relaypacs-backup-<UTC time>`` holding ``database.dump``
(PostgreSQL: ``pg_dump`` custom format) or ``database.sqlite3`` (SQLite: its online backup
API, consistent while the product runs), ``reports.tar`` and ``manifest.json`` (what is
inside, with SHA-256 sums). It is written under a hidden name and renamed when complete,
so a folder with the final name is always a whole backup.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connections

from relaypacs.errors import ApplicationError

PREFIX = "relaypacs-backup-"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# Hashing and copying in blocks: a report store of many GB never sits in memory.
BLOCK = 1024 * 1024
# pg_dump/pg_restore of a large database on a slow disk; beyond this, something is wrong.
PG_TIMEOUT_SECONDS = 6 * 3600


@dataclass(frozen=True)
class BackupPlan:
    """What a restore would do, for ``--dry-run`` and for the refusal message."""

    backup: Path
    engine: str
    created_at: str
    database_tables: int
    report_files: int


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _database() -> dict[str, Any]:
    return dict(connections["default"].settings_dict)


def _engine() -> str:
    vendor = connections["default"].vendor
    if vendor not in {"postgresql", "sqlite"}:
        raise ApplicationError(
            "backup_unsupported_database",
            f"Backups support PostgreSQL and SQLite, not {vendor}.",
            "Back the database up with its own tools.",
        )
    return vendor


def _pg_args(db: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    args = []
    if db.get("HOST"):
        args += ["--host", str(db["HOST"])]
    if db.get("PORT"):
        args += ["--port", str(db["PORT"])]
    if db.get("USER"):
        args += ["--username", str(db["USER"])]
    env = {**os.environ}
    if db.get("PASSWORD"):
        env["PGPASSWORD"] = str(db["PASSWORD"])  # never on the command line (ps shows it)
    return args, env


def _run(argv: list[str], env: dict[str, str], what: str) -> None:
    try:
        done = subprocess.run(  # noqa: S603
            argv, env=env, capture_output=True, text=True, timeout=PG_TIMEOUT_SECONDS, check=False
        )
    except FileNotFoundError as exc:
        raise ApplicationError(
            "backup_tool_missing",
            f"{argv[0]} is not installed, so the database cannot be {what}.",
            "Install the PostgreSQL client (apt-get install postgresql-client).",
        ) from exc
    if done.returncode != 0:
        # The tool's own last line says what failed (no data is in it).
        detail = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ApplicationError(
            "backup_failed" if what == "backed up" else "restore_failed",
            f"The database could not be {what}: {detail}",
            "Check the database address and credentials, and the free disk space.",
        )


def backup_create(*, target: Path, keep: int) -> Path:
    """Write a whole backup under ``target``; then keep only the newest ``keep`` backups.

    Returns the backup's folder. Raises ApplicationError when the database cannot be
    dumped (nothing partial is left under the final name).
    """
    engine = _engine()
    target.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(tz=UTC).strftime("%Y%m%dT%H%M%S%fZ")
    final = target / f"{PREFIX}{stamp}"
    partial = target / f".{PREFIX}{stamp}.partial"
    partial.mkdir()
    try:
        db = _database()
        if engine == "postgresql":
            args, env = _pg_args(db)
            database_file = partial / "database.dump"
            _run(
                [
                    "pg_dump",
                    "--format=custom",
                    "--no-owner",
                    "--no-privileges",
                    *args,
                    "--file",
                    str(database_file),
                    str(db["NAME"]),
                ],
                env,
                "backed up",
            )
        else:
            database_file = partial / "database.sqlite3"
            source = sqlite3.connect(str(db["NAME"]))
            copy = sqlite3.connect(str(database_file))
            with copy:
                source.backup(copy)
            copy.close()
            source.close()
        reports_tar = partial / "reports.tar"
        report_dir = Path(settings.REPORT_STORAGE_DIR)
        with tarfile.open(reports_tar, "w") as tar:
            if report_dir.is_dir():
                for path in sorted(report_dir.rglob("*")):
                    if path.is_file() and not path.is_symlink():
                        tar.add(path, arcname=str(path.relative_to(report_dir)), recursive=False)
        manifest = {
            "format": FORMAT_VERSION,
            "created_at": datetime.now(tz=UTC).isoformat(),
            "engine": engine,
            "files": {p.name: _sha256(p) for p in (database_file, reports_tar)},
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
        partial.rename(final)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    backups_prune(target=target, keep=keep)
    return final


def backups_list(*, target: Path) -> list[Path]:
    """Whole backups under ``target``, oldest first."""
    if not target.is_dir():
        return []
    return sorted(p for p in target.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def backups_prune(*, target: Path, keep: int) -> list[Path]:
    """Remove all but the newest ``keep`` backups; returns the removed folders."""
    backups = backups_list(target=target)
    removed = backups[: max(0, len(backups) - max(1, keep))]
    for path in removed:
        shutil.rmtree(path)
    return removed


def _manifest(backup: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((backup / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise ApplicationError(
            "backup_invalid",
            f"{backup} is not a RelayPACS backup: its manifest.json is missing or damaged.",
            "Give the folder that `manage.py backup` made (relaypacs-backup-<time>).",
        ) from exc
    for name, digest in manifest["files"].items():
        if not (backup / name).is_file() or _sha256(backup / name) != digest:
            raise ApplicationError(
                "backup_damaged",
                f"The backup's {name} is missing or differs from what was backed up.",
                "Restore another backup, or copy this one again from where it is kept.",
            )
    return manifest


def _database_tables(engine: str) -> int:
    with connections["default"].cursor() as cursor:
        return len(connections["default"].introspection.table_names(cursor))


def restore_plan(*, backup: Path) -> BackupPlan:
    """Check the backup (manifest and sums) and look at the target; changes nothing."""
    manifest = _manifest(backup)
    engine = _engine()
    if manifest["engine"] != engine:
        raise ApplicationError(
            "backup_other_database",
            f"This backup is of a {manifest['engine']} database; this server uses {engine}.",
            "Restore it into a server with the same kind of database.",
        )
    report_dir = Path(settings.REPORT_STORAGE_DIR)
    report_files = (
        sum(1 for p in report_dir.rglob("*") if p.is_file()) if report_dir.is_dir() else 0
    )
    return BackupPlan(
        backup=backup,
        engine=engine,
        created_at=str(manifest["created_at"]),
        database_tables=_database_tables(engine),
        report_files=report_files,
    )


def backup_restore(*, backup: Path) -> BackupPlan:
    """Restore ``backup`` into an empty database and an empty report store.

    Refuses (ApplicationError 409, nothing changed) when the database has any table or
    the report store any file: a restore never mixes with existing data.
    """
    plan = restore_plan(backup=backup)
    if plan.database_tables or plan.report_files:
        raise ApplicationError(
            "restore_target_not_empty",
            f"The target is not empty: the database has {plan.database_tables} tables and "
            f"the report store {plan.report_files} files. Nothing was restored.",
            "Restore into a new, empty database and an empty REPORT_STORAGE_DIR (or drop "
            "and recreate them once you are sure they hold nothing you need).",
            status_code=409,
        )
    db = _database()
    if plan.engine == "postgresql":
        connections["default"].close()
        args, env = _pg_args(db)
        _run(
            [
                "pg_restore",
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--single-transaction",
                *args,
                "--dbname",
                str(db["NAME"]),
                str(backup / "database.dump"),
            ],
            env,
            "restored",
        )
    else:
        connections["default"].close()
        source = sqlite3.connect(str(backup / "database.sqlite3"))
        target = sqlite3.connect(str(db["NAME"]))
        with target:
            source.backup(target)
        target.close()
        source.close()
    report_dir = Path(settings.REPORT_STORAGE_DIR)
    report_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(backup / "reports.tar") as tar:
        tar.extractall(report_dir, filter="data")  # no paths out of the folder, no links
    return plan
