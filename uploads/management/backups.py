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

A target is a folder or ``s3://<bucket>/<prefix>`` (``backup_target_parse``; the bucket
side lives in ``uploads.management.backup_bucket``: the same files, streamed in, the
manifest written last). ``BACKUP_TARGET`` unset means ``DATA_DIR/backups`` on local
storage and ``s3://<S3_BUCKET>/backups/`` when ``UPLOAD_STORAGE=s3`` (every node sees
it). Beat runs ``backup_scheduled`` daily (``BACKUP_SCHEDULE``, keeping ``BACKUP_KEEP``).

After a restore, uploads that were under way are reconciled with the bytes the upload
storage still holds (``uploads.services.recovery``): their upload bytes were never in
the backup.

The report store is reached through ``reports.store`` (its only way in), imported where
used: backups are the whole product's, kept here beside the other operations commands.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from django.conf import settings
from django.core.cache import cache
from django.db import connections

from relaypacs.errors import ApplicationError

from . import backup_bucket
from .backup_bucket import BucketPlace

logger = logging.getLogger(__name__)

PREFIX = "relaypacs-backup-"
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# Hashing and copying in blocks: a report store of many GB never sits in memory.
BLOCK = 1024 * 1024
# pg_dump/pg_restore of a large database on a slow disk; beyond this, something is wrong.
PG_TIMEOUT_SECONDS = 6 * 3600
S3_SCHEME = "s3://"
# The product's own bucket keeps backups beside uploads/ and reports/ (never swept).
BUCKET_DEFAULT_PREFIX = "backups/"
# A week of daily backups.
DEFAULT_KEEP = 7
# Set (in the shared cache: Redis with several nodes) while a scheduled backup runs, to
# the running delivery's token; renewed every SCHEDULED_LOCK_RENEW_SECONDS for
# SCHEDULED_LOCK_SECONDS, so it outlives no killed worker by more than that and no run
# however long it takes.
SCHEDULED_RUNNING_KEY = "relaypacs:backup-running"
SCHEDULED_LOCK_SECONDS = 30 * 60
SCHEDULED_LOCK_RENEW_SECONDS = 5 * 60
# A backup cut short (a worker killed: a `.partial` folder, objects without a manifest,
# an unfinished multipart upload) that is this old is being written by no one: a run is
# far shorter (pg_dump stops at PG_TIMEOUT_SECONDS).
UNFINISHED_AGE = timedelta(days=1)


@dataclass(frozen=True)
class BackupTarget:
    """Where backups are kept: a folder, or a place in a bucket."""

    folder: Path | None = None
    place: BucketPlace | None = None

    def __str__(self) -> str:
        return str(self.folder if self.folder is not None else self.place)


def backup_target_default() -> str:
    """``BACKUP_TARGET``, or where backups go without it: ``DATA_DIR/backups`` on local
    storage, the ``backups/`` prefix of ``S3_BUCKET`` in S3 mode (so every node, and a
    new host after a disaster, reaches them)."""
    configured = str(getattr(settings, "BACKUP_TARGET", "") or "")
    if configured:
        return configured
    if str(getattr(settings, "UPLOAD_STORAGE", "local")).lower() == "s3" and settings.S3_BUCKET:
        return f"{S3_SCHEME}{settings.S3_BUCKET}/{BUCKET_DEFAULT_PREFIX}"
    return str(Path(settings.DATA_DIR) / "backups")


def backup_target_parse(*, target: str) -> BackupTarget:
    """A folder path, or ``s3://<bucket>/<prefix>``. Raises ApplicationError
    ``backup_target_invalid`` for an ``s3://`` target without a bucket."""
    if not target.startswith(S3_SCHEME):
        return BackupTarget(folder=Path(target))
    bucket, _, prefix = target[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ApplicationError(
            "backup_target_invalid",
            f"The backup target {target} names no bucket.",
            "Give it as s3://<bucket>/<prefix>, for example s3://relaypacs-uploads/backups/.",
        )
    prefix = prefix.strip("/")
    return BackupTarget(place=BucketPlace(bucket=bucket, prefix=f"{prefix}/" if prefix else ""))


@dataclass(frozen=True)
class BackupPlan:
    """What a restore would do, for ``--dry-run`` and for the refusal message."""

    backup: str
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
    with path.open("wb") as out:
        return _reports_tar_into(out)


def _reports_tar_into(out: IO[bytes]) -> dict[str, str]:
    """Write the tar of every report store file into ``out`` as a stream (no seeking)."""
    from reports import store

    digests: dict[str, str] = {}
    with tarfile.open(fileobj=out, mode="w|") as tar:
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


def _run(
    argv: list[str],
    env: dict[str, str],
    what: str,
    *,
    stdout: int | None = None,
    stdin: BinaryIO | None = None,
) -> None:
    """Run a PostgreSQL tool; its output into ``stdout`` (a file descriptor) when given,
    ``stdin`` (read through once, in blocks) fed to it when given."""
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(  # noqa: S603
                argv,
                env=env,
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=stdout if stdout is not None else subprocess.DEVNULL,
                stderr=errors,
            )
        except FileNotFoundError as exc:
            raise ApplicationError(
                "backup_tool_missing",
                f"{argv[0]} is not installed, so the database cannot be {what}.",
                "Install the PostgreSQL client (apt-get install postgresql-client).",
            ) from exc
        try:
            if stdin is not None:
                assert process.stdin is not None
                try:
                    while block := stdin.read(BLOCK):
                        process.stdin.write(block)
                except BrokenPipeError:
                    pass  # the tool stopped reading: its exit code and message say why
                finally:
                    try:
                        process.stdin.close()
                    except BrokenPipeError:
                        pass
            returncode = process.wait(timeout=PG_TIMEOUT_SECONDS)
        except BaseException:
            process.kill()
            process.wait()
            raise
        errors.seek(0)
        stderr = errors.read().decode("utf-8", "replace")
    if returncode != 0:
        # The tool's own last error line says what failed. Its CONTEXT, DETAIL and similar
        # lines can quote a row of a table (patient data): they are never repeated.
        lines = [
            line
            for line in stderr.strip().splitlines()
            if not line.lstrip().startswith(("CONTEXT:", "DETAIL:", "HINT:", "LINE ", "QUERY:"))
            and '"' not in line
        ]
        detail = (lines or [f"{argv[0]} ended with code {returncode}"])[-1]
        raise ApplicationError(
            "backup_failed" if what == "backed up" else "restore_failed",
            f"The database could not be {what}: {detail}",
            "Check the database address and credentials, and the free disk space.",
        )


def _pg_dump_argv(db: dict[str, Any], args: list[str], *, file: Path | None) -> list[str]:
    return [
        "pg_dump",
        "--format=custom",
        "--no-owner",
        "--no-privileges",
        *args,
        *(["--file", str(file)] if file is not None else []),
        str(db["NAME"]),
    ]


def _sqlite_copy(*, source: str, target: Path) -> None:
    """SQLite's online backup API: a consistent copy while the product writes."""
    origin = sqlite3.connect(source)
    copy = sqlite3.connect(str(target))
    with copy:
        origin.backup(copy)
    copy.close()
    origin.close()


def _report_store_unreadable(exc: Exception) -> ApplicationError:
    from reports import store

    return ApplicationError(
        "backup_report_store_unavailable",
        f"The report store ({store.where()}) could not be read, so no backup was made.",
        "Check that the S3 bucket is reachable with the configured credentials, "
        "then run the backup again.",
    )


def backup_run(*, target: str, keep: int) -> str:
    """Write a whole backup to ``target`` (a folder or ``s3://bucket/prefix``), then keep
    only the newest ``keep`` there (never the one just written; nothing is removed when
    the backup failed). Returns where the backup is. Raises ApplicationError."""
    where = backup_target_parse(target=target)
    if where.folder is not None:
        return str(backup_create(target=where.folder, keep=keep))
    assert where.place is not None
    return _backup_to_bucket(place=where.place, keep=keep)


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
            _run(_pg_dump_argv(db, args, file=database_file), env, "backed up")
        else:
            database_file = partial / "database.sqlite3"
            _sqlite_copy(source=str(db["NAME"]), target=database_file)
        from reports import store

        reports_tar = partial / "reports.tar"
        try:
            report_digests = _reports_tar_write(reports_tar)
        except store.ReportStoreUnavailable as exc:
            raise _report_store_unreadable(exc) from exc
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
    try:
        backups_prune(target=target, keep=keep, written=final)
    except OSError as exc:
        # The backup is written: a prune that failed (a folder another run removed, a
        # disk error) is tried again by the next backup.
        logger.warning("The old backups under %s could not all be removed (%r).", target, exc)
    return final


def backups_at(*, target: str) -> list[str]:
    """Where each whole backup under ``target`` is (as ``restore`` takes it), oldest first."""
    where = backup_target_parse(target=target)
    if where.folder is not None:
        return [str(path) for path in backups_list(target=where.folder)]
    assert where.place is not None
    return [
        f"{where.place}{name}"
        for name in backup_bucket.backups_list(place=where.place, name_prefix=PREFIX)
    ]


def _backup_to_bucket(*, place: BucketPlace, keep: int) -> str:
    """``backup_create`` into a bucket: each file streamed as it is produced, the
    manifest last; on any failure the objects written are deleted and nothing is pruned."""
    engine = _engine()
    from reports import store

    name = f"{PREFIX}{datetime.now(tz=UTC).strftime('%Y%m%dT%H%M%S%fZ')}"
    base = f"{place.prefix}{name}/"
    db = _database()
    files: dict[str, str] = {}
    try:
        if engine == "postgresql":
            args, env = _pg_args(db)

            def dump(fd: int) -> None:
                _run(_pg_dump_argv(db, args, file=None), env, "backed up", stdout=fd)

            files["database.dump"] = backup_bucket.stream_upload(
                place=place, key=base + "database.dump", produce=dump
            )
        else:
            with _private_tempdir() as scratch:
                copy = scratch / "database.sqlite3"
                _sqlite_copy(source=str(db["NAME"]), target=copy)

                def send_copy(fd: int) -> None:
                    with copy.open("rb") as handle, os.fdopen(fd, "wb", closefd=False) as out:
                        shutil.copyfileobj(handle, out, BLOCK)

                files["database.sqlite3"] = backup_bucket.stream_upload(
                    place=place, key=base + "database.sqlite3", produce=send_copy
                )
        report_digests: dict[str, str] = {}

        def tar(fd: int) -> None:
            with os.fdopen(fd, "wb", closefd=False) as out:
                report_digests.update(_reports_tar_into(out))

        try:
            files["reports.tar"] = backup_bucket.stream_upload(
                place=place, key=base + "reports.tar", produce=tar
            )
        except store.ReportStoreUnavailable as exc:
            raise _report_store_unreadable(exc) from exc
        manifest = {
            "format": FORMAT_VERSION,
            "created_at": datetime.now(tz=UTC).isoformat(),
            "engine": engine,
            "report_store": store.backend_name(),
            "files": files,
            "report_files": report_digests,
        }
        backup_bucket.put_bytes(
            place=place, key=base + MANIFEST, data=json.dumps(manifest, indent=2).encode()
        )
    except BaseException:
        try:
            backup_bucket.backup_delete(place=place, name=name)
        except ApplicationError:
            logger.warning("The parts of a failed backup could not be deleted from %s.", place)
        raise
    try:
        for old in _bucket_prune(place=place, keep=keep, written=name):
            logger.info("Removed the old backup %s%s", place, old)
    except ApplicationError as exc:
        # The backup is written: a prune that failed (S3 answering 503) is tried again
        # by the next backup.
        logger.warning("The old backups in %s could not all be removed (%s).", place, exc.code)
    return f"{place}{name}"


def _bucket_prune(
    *, place: BucketPlace, keep: int, written: str, now: datetime | None = None
) -> list[str]:
    """Delete all but the newest ``keep`` whole backups (never ``written``), then the
    backups cut short more than UNFINISHED_AGE ago. Returns the names removed. Raises
    ApplicationError ``backup_bucket_unavailable``."""
    backups = backup_bucket.backups_list(place=place, name_prefix=PREFIX)
    removed = [b for b in backups[: max(0, len(backups) - max(1, keep))] if b != written]
    for name in removed:
        backup_bucket.backup_delete(place=place, name=name)
    cut_off = (now or datetime.now(tz=UTC)) - UNFINISHED_AGE
    for name in backup_bucket.backups_unfinished(
        place=place, name_prefix=PREFIX, older_than=cut_off
    ):
        if name != written:
            backup_bucket.backup_delete(place=place, name=name)
            removed.append(name)
    return removed


@contextmanager
def _private_tempdir() -> Iterator[Path]:
    """A folder under DATA_DIR only this user reads (patient data), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=".relaypacs-backup-", dir=settings.DATA_DIR))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def backups_list(*, target: Path) -> list[Path]:
    """Whole backups under ``target``, oldest first."""
    if not target.is_dir():
        return []
    return sorted(p for p in target.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def backups_prune(
    *, target: Path, keep: int, written: Path | None = None, now: datetime | None = None
) -> list[Path]:
    """Remove all but the newest ``keep`` backups (at least one, and never ``written``,
    the backup just made), and the ``.partial`` folders of backups cut short that were
    last written more than UNFINISHED_AGE ago; returns the removed folders. A folder
    already gone (another run removed it) is fine. Raises OSError."""
    backups = backups_list(target=target)
    removed = [b for b in backups[: max(0, len(backups) - max(1, keep))] if b != written]
    cut_off = ((now or datetime.now(tz=UTC)) - UNFINISHED_AGE).timestamp()
    if target.is_dir():
        for path in sorted(target.glob(f".{PREFIX}*.partial")):
            try:
                if path.is_dir() and _last_written(path) < cut_off:
                    removed.append(path)
            except FileNotFoundError:
                continue
    for path in removed:
        _rmtree_gone_ok(path)
    return removed


def _last_written(folder: Path) -> float:
    """The newest modification time of ``folder`` and of the files in it."""
    return max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])


def _rmtree_gone_ok(path: Path) -> None:
    """``shutil.rmtree``, where a file or folder already removed is not an error."""

    def gone_ok(function: Any, name: str, info: Any) -> None:
        if not issubclass(info[0], FileNotFoundError):
            raise info[1]

    shutil.rmtree(path, onerror=gone_ok)


class _Source(Protocol):
    """A backup to restore: a folder or a place in a bucket, read as streams."""

    def manifest_bytes(self) -> bytes | None: ...

    def open(self, name: str) -> Any: ...  # a context manager yielding a reader

    def __str__(self) -> str: ...


@dataclass(frozen=True)
class _FolderSource:
    folder: Path

    def manifest_bytes(self) -> bytes | None:
        try:
            return (self.folder / MANIFEST).read_bytes()
        except OSError:
            return None

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        with (self.folder / name).open("rb") as handle:
            yield handle

    def __str__(self) -> str:
        return str(self.folder)


@dataclass(frozen=True)
class _BucketSource:
    place: BucketPlace  # the backup's own prefix: <target prefix>relaypacs-backup-<time>/

    def manifest_bytes(self) -> bytes | None:
        return backup_bucket.read_bytes(place=self.place, key=self.place.prefix + MANIFEST)

    def open(self, name: str) -> Any:
        return backup_bucket.open_object(place=self.place, key=self.place.prefix + name)

    def __str__(self) -> str:
        return str(self.place)


def _source(backup: Path | str) -> _Source:
    where = backup_target_parse(target=str(backup))
    if where.place is not None:
        return _BucketSource(
            place=BucketPlace(bucket=where.place.bucket, prefix=where.place.prefix)
        )
    assert where.folder is not None
    return _FolderSource(folder=where.folder)


def _stream_sha256(source: _Source, name: str) -> str | None:
    """The SHA-256 of one file of the backup, read through once; None when it is missing."""
    digest = hashlib.sha256()
    try:
        with source.open(name) as handle:
            while block := handle.read(BLOCK):
                digest.update(block)
    except (FileNotFoundError, IsADirectoryError):
        return None
    return digest.hexdigest()


def _manifest(source: _Source) -> dict[str, Any]:
    """The backup's manifest, once every file it lists was read and matches its SHA-256.
    Raises ApplicationError ``backup_invalid`` or ``backup_damaged``."""
    raw = source.manifest_bytes()
    try:
        manifest: dict[str, Any] = json.loads(raw or b"")
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ApplicationError(
            "backup_invalid",
            f"{source} is not a RelayPACS backup: its manifest.json is missing or damaged.",
            "Give the folder or bucket prefix that `manage.py backup` made "
            "(relaypacs-backup-<time>).",
        ) from exc
    for name, digest in files.items():
        if _stream_sha256(source, name) != digest:
            raise ApplicationError(
                "backup_damaged",
                f"The backup's {name} is missing or differs from what was backed up.",
                "Restore another backup, or copy this one again from where it is kept.",
            )
    return manifest


def _database_tables(engine: str) -> int:
    with connections["default"].cursor() as cursor:
        return len(connections["default"].introspection.table_names(cursor))


def restore_plan(*, backup: Path | str) -> BackupPlan:
    """Check the backup (manifest and sums, every file read once) and look at the target;
    changes nothing. ``backup`` is a folder or ``s3://bucket/prefix/relaypacs-backup-<time>``."""
    source = _source(backup)
    manifest = _manifest(source)
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
        backup=str(source),
        engine=engine,
        created_at=str(manifest["created_at"]),
        database_tables=_database_tables(engine),
        report_files=report_files,
    )


@dataclass(frozen=True)
class RestoreOutcome:
    plan: BackupPlan
    # What became of the uploads under way at backup time; None when the database's
    # schema is older than this release (reconciled after `migrate`, see the command).
    uploads: Any


def backup_restore(*, backup: Path | str) -> RestoreOutcome:
    """Restore ``backup`` into an empty database and an empty report store, then
    reconcile the uploads that were under way with the upload storage
    (``uploads.services.recovery.uploads_reconcile``).

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
    source = _source(backup)
    db = _database()
    connections["default"].close()
    if plan.engine == "postgresql":
        args, env = _pg_args(db)
        with source.open("database.dump") as dump:
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
                ],
                env,
                "restored",
                stdin=dump,
            )
    else:
        with _private_tempdir() as scratch:
            copy = scratch / "database.sqlite3"
            with source.open("database.sqlite3") as handle, copy.open("wb") as out:
                shutil.copyfileobj(handle, out, BLOCK)
            _sqlite_copy(source=str(copy), target=Path(str(db["NAME"])))
    # The manifest was checked by restore_plan; read again only for the report sums.
    manifest = json.loads(source.manifest_bytes() or b"{}")
    with source.open("reports.tar") as tar:
        _reports_tar_restore_from(tar, digests=manifest.get("report_files"))
    return RestoreOutcome(plan=plan, uploads=_uploads_reconcile_if_current())


def _uploads_reconcile_if_current() -> Any:
    """Reconcile the restored uploads, when the restored schema is this release's."""
    from django.db.migrations.executor import MigrationExecutor

    from uploads.services.recovery import uploads_reconcile

    connection = connections["default"]
    executor = MigrationExecutor(connection)
    if executor.migration_plan(executor.loader.graph.leaf_nodes()):
        return None
    from uploads.storage import StorageUnavailable

    try:
        return uploads_reconcile()
    except (ApplicationError, StorageUnavailable) as exc:
        raise ApplicationError(
            "restore_uploads_unchecked",
            "The backup was restored, but the upload storage could not be read, so the "
            "uploads under way at backup time were not checked.",
            "Run `manage.py reconcile_uploads` once the upload storage answers, before "
            "starting web and worker.",
        ) from exc


def _reports_tar_restore(*, backup: Path, digests: dict[str, str] | None) -> None:
    """``_reports_tar_restore_from`` the reports.tar of the backup folder ``backup``."""
    with (backup / "reports.tar").open("rb") as tar:
        _reports_tar_restore_from(tar, digests=digests)


def _reports_tar_restore_from(stream: BinaryIO, *, digests: dict[str, str] | None) -> None:
    """Write every regular file of the tar read from ``stream`` (once, in order) into the
    report store (local folder or bucket), streamed, checking each against the manifest's
    SHA-256 when the backup has them (backups made before they were recorded have not)."""
    from reports import store

    with tarfile.open(fileobj=stream, mode="r|") as tar:
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


@contextmanager
def _scheduled_lock() -> Iterator[bool]:
    """Hold SCHEDULED_RUNNING_KEY (yields whether this delivery got it): set to a token
    of ours, renewed by a thread while the backup runs, and deleted at the end only when
    it still holds our token (a lock that ran out and was taken by another delivery is
    that one's)."""
    token = uuid.uuid4().hex
    if not cache.add(SCHEDULED_RUNNING_KEY, token, SCHEDULED_LOCK_SECONDS):
        yield False
        return
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(SCHEDULED_LOCK_RENEW_SECONDS):
            try:
                if cache.get(SCHEDULED_RUNNING_KEY) != token:
                    return
                cache.touch(SCHEDULED_RUNNING_KEY, SCHEDULED_LOCK_SECONDS)
            except Exception:  # noqa: BLE001  (the next turn tries again)
                logger.warning("The scheduled backup's lock could not be renewed.")

    renewer = threading.Thread(target=renew, name="backup-lock", daemon=True)
    renewer.start()
    try:
        yield True
    finally:
        stop.set()
        renewer.join()
        try:
            if cache.get(SCHEDULED_RUNNING_KEY) == token:
                cache.delete(SCHEDULED_RUNNING_KEY)
        except Exception:  # noqa: BLE001  (it runs out by itself)
            logger.warning("The scheduled backup's lock could not be released.")


def backup_scheduled() -> str | None:
    """Beat's daily backup (``BACKUP_SCHEDULE``): to ``backup_target_default()``, keeping
    ``BACKUP_KEEP``. Returns where the backup is, or None when it failed.

    Never raises: a failure is logged (its code and sentence, never a row of a table),
    counted in ``relaypacs_backups_total{outcome="failed"}`` and recorded in the audit
    trail (DICOM "Export", outcome serious failure) that administrators read; the
    backups already kept are left as they were. Safe to run twice: a delivery that finds
    another one running (``SCHEDULED_RUNNING_KEY`` in the shared cache) returns None at
    once; one after it writes a second backup, pruned as usual.
    """
    from accounts.models import AuditOutcome
    from accounts.services.audit import audit_record
    from uploads.metrics import BACKUPS

    target = backup_target_default()
    kind = "bucket" if target.startswith(S3_SCHEME) else "folder"
    keep = int(getattr(settings, "BACKUP_KEEP", DEFAULT_KEEP))
    # The broker hands a task that runs longer than its visibility timeout (an hour) to
    # another worker: that second delivery finds the mark and leaves the backup running.
    with _scheduled_lock() as held:
        if not held:
            logger.warning("A scheduled backup is already running; this delivery of it stops.")
            return None
        try:
            where = backup_run(target=target, keep=keep)
        except Exception as exc:  # noqa: BLE001  (every failure is reported the same way)
            code = exc.code if isinstance(exc, ApplicationError) else type(exc).__name__
            sentence = exc.message if isinstance(exc, ApplicationError) else "an unexpected error"
            logger.error("The scheduled backup to %s failed (%s): %s", target, code, sentence)
            BACKUPS.labels(outcome="failed").inc()
            try:
                audit_record(
                    action="export",
                    facility_id=None,
                    username="relaypacs",
                    outcome=AuditOutcome.SERIOUS_FAILURE,
                    object_type="backup",
                    detail={"scheduled": True, "target": kind, "code": code},
                )
            except Exception:  # noqa: BLE001  (the database may be what failed)
                logger.exception("The failed scheduled backup could not be audited.")
            return None
    name = where.rstrip("/").rsplit("/", 1)[-1]
    logger.info("The scheduled backup was written to %s", where)
    BACKUPS.labels(outcome="written").inc()
    try:
        audit_record(
            action="export",
            facility_id=None,
            username="relaypacs",
            object_type="backup",
            object_id=name[:64],
            detail={"scheduled": True, "target": kind, "keep": keep},
        )
    except Exception:  # noqa: BLE001  (the backup is written; never raises)
        logger.exception("The scheduled backup was written but could not be audited.")
    return where
