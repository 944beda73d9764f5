"""Backups of what RelayPACS cannot get back from elsewhere: the database and the report
store (signed reports' PDFs and letterheads: REPORT_STORAGE_DIR, or the ``reports/``
prefix of S3_BUCKET when UPLOAD_STORAGE=s3). Upload bytes are temporary (delivered to the
PACS, then removed) and are not backed up.

A backup is a folder ``relaypacs-backup-<UTC time>`` holding ``database.dump``
(PostgreSQL: ``pg_dump`` custom format) or ``database.sqlite3`` (SQLite: its online backup
API, consistent while the product runs), ``reports.tar`` (every file of the report store,
streamed from the folder or the bucket through ``reports.store``) and ``manifest.json``
(what is inside, with SHA-256 sums of each file and of each report store file). It is
written under a hidden name and renamed when complete, so a folder with the final name is
always a whole backup. A restore writes the report files back through the same store, so
a backup of one kind of store restores into the other (local disk to S3 and back).

The report store is reached through ``reports.store`` (its only way in), imported where
used: backups are the whole product's, kept here beside the other operations commands.
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


class _HashingReader:
    """A reader that hashes what is read through it (tarfile copies in blocks)."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._raw.read(size)
        self.digest.update(data)
        return data


def _reports_tar_write(path: Path) -> dict[str, str]:
    """Copy every report store file into the tar at ``path``, streamed; returns each
    file's SHA-256. Raises ReportStoreUnavailable, OSError."""
    from reports import store

    digests: dict[str, str] = {}
    with tarfile.open(path, "w") as tar:
        for name, size in store.files():
            info = tarfile.TarInfo(name)
            info.size = size
            info.mtime = int(datetime.now(tz=UTC).timestamp())
            info.mode = 0o644
            with store.open(relative=name) as handle:
                reader = _HashingReader(handle)
                tar.addfile(info, reader)  # type: ignore[arg-type]
            digests[name] = reader.digest.hexdigest()
    return digests


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
        # The tool's own last error line says what failed. Its CONTEXT, DETAIL and similar
        # lines can quote a row of a table (patient data): they are never repeated.
        lines = [
            line
            for line in done.stderr.strip().splitlines()
            if not line.lstrip().startswith(("CONTEXT:", "DETAIL:", "HINT:", "LINE ", "QUERY:"))
            and '"' not in line
        ]
        detail = (lines or [f"{argv[0]} ended with code {done.returncode}"])[-1]
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
    # Patient data: the backup is the reading user's only (folders 0700, files 0600),
    # whatever the process's umask.
    partial.mkdir(mode=0o700)
    previous_umask = os.umask(0o077)
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
        from reports import store

        reports_tar = partial / "reports.tar"
        try:
            report_digests = _reports_tar_write(reports_tar)
        except store.ReportStoreUnavailable as exc:
            raise ApplicationError(
                "backup_report_store_unavailable",
                f"The report store ({store.where()}) could not be read, so no backup was made.",
                "Check that the S3 bucket is reachable with the configured credentials, "
                "then run the backup again.",
            ) from exc
        manifest = {
            "format": FORMAT_VERSION,
            "created_at": datetime.now(tz=UTC).isoformat(),
            "engine": engine,
            "report_store": store.backend_name(),
            "files": {p.name: _sha256(p) for p in (database_file, reports_tar)},
            "report_files": report_digests,
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2))
        partial.rename(final)
    finally:
        os.umask(previous_umask)
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
    from reports import store

    try:
        report_files = sum(1 for _ in store.files())
    except store.ReportStoreUnavailable as exc:
        raise ApplicationError(
            "restore_report_store_unavailable",
            f"The report store ({store.where()}) could not be read. Nothing was restored.",
            "Check that the S3 bucket is reachable with the configured credentials, then "
            "run the restore again.",
        ) from exc
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
            "Restore into a new, empty database and an empty report store (REPORT_STORAGE_DIR, "
            "or the bucket's reports/ prefix in S3 mode), or empty them once you are sure "
            "they hold nothing you need.",
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
    # The manifest was checked by restore_plan; read again only for the report sums.
    manifest = json.loads((backup / MANIFEST).read_text())
    _reports_tar_restore(backup=backup, digests=manifest.get("report_files"))
    return plan


def _reports_tar_restore(*, backup: Path, digests: dict[str, str] | None) -> None:
    """Write every regular file of the backup's reports.tar into the report store (local
    folder or bucket), streamed, checking each against the manifest's SHA-256 when the
    backup has them (backups made before they were recorded have not)."""
    from reports import store

    with tarfile.open(backup / "reports.tar") as tar:
        for member in tar:
            if not member.isfile():
                continue  # no links, devices or folders (folders come with their files)
            source = tar.extractfile(member)
            if source is None:
                continue
            with source:
                reader = _HashingReader(source)
                try:
                    # The store refuses absolute names and ".." (nothing lands outside it).
                    store.write_once(relative=member.name, data=reader)  # type: ignore[arg-type]
                except ValueError as exc:
                    raise ApplicationError(
                        "backup_invalid",
                        "The backup's reports.tar names a file outside the report store.",
                        "Restore a backup made by `manage.py backup`.",
                    ) from exc
            expected = (digests or {}).get(member.name)
            if expected is not None and reader.digest.hexdigest() != expected:
                store.delete(relative=member.name)  # the store was empty: it was this one
                raise ApplicationError(
                    "backup_damaged",
                    f"The backup's report file {member.name} differs from what was backed up.",
                    "Restore another backup, or copy this one again from where it is kept.",
                )
