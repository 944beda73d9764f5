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

import fcntl
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
from django.db import connections, transaction

from relaypacs.errors import ApplicationError

from . import backup_bucket
from .backup_bucket import BucketPlace
from .commands.migrate_locked import MIGRATE_LOCK_ID, RESTORE_LOCK_FILE

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
# Scratch folders under DATA_DIR (a SQLite copy on its way to a bucket, a bucket backup
# downloaded for a restore), each holding SCRATCH_OWNER locked by its process.
SCRATCH_PREFIX = ".relaypacs-scratch-"
SCRATCH_OWNER = ".owner.lock"
# A folder made and not yet locked: microseconds in practice, far more than that here.
SCRATCH_UNOWNED_GRACE = timedelta(minutes=10)
# Scratch folders of releases before the owner file (tempfile's name, never locked).
LEGACY_SCRATCH_PREFIX = ".relaypacs-backup-"


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
    # The sentence about a restore cut short that a restore would remove first, if any.
    unfinished_restore: str | None = None


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
        # A restore that began after the check of backup_run: never part of a backup.
        f"--exclude-table={RESTORE_MARKER_TABLE}",
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


def _sqlite_backup_copy(*, source: str, target: Path) -> None:
    """``_sqlite_copy`` for a backup: the marker of a restore that began meanwhile is
    left out of it (backup_run refused while it was there before)."""
    _sqlite_copy(source=source, target=target)
    copy = sqlite3.connect(str(target))
    try:
        with copy:
            copy.execute(f"DROP TABLE IF EXISTS {RESTORE_MARKER_TABLE}")
    finally:
        copy.close()


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
    the backup failed). Returns where the backup is. Raises ApplicationError, among them
    ``backup_restore_unfinished`` (nothing written or pruned) while the database holds a
    restore that stopped part way: backing that up would keep part of a backup as whole
    and prune whole ones."""
    unfinished = _restore_unfinished()
    if unfinished is not None:
        raise ApplicationError(
            "backup_restore_unfinished",
            f"{unfinished.sentence()} The database holds part of that backup, so no "
            "backup was made.",
            "Run `manage.py restore` again to finish the restore, then back up.",
            status_code=409,
        )
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
    scratch_sweep()
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
            _sqlite_backup_copy(source=str(db["NAME"]), target=database_file)
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
        # On disk before the manifest says they are whole, and the manifest and the
        # rename before the backup is reported written: a power cut never leaves a
        # backup folder whose files are short or empty.
        for path in (database_file, reports_tar):
            _fsync(path)
        with (partial / MANIFEST).open("x", encoding="utf-8") as out:
            out.write(json.dumps(manifest, indent=2))
            out.flush()
            os.fsync(out.fileno())
        _fsync(partial)
        partial.rename(final)
        _fsync(target)
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


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's entries (a rename, a new file) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    scratch_sweep()
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
                _sqlite_backup_copy(source=str(db["NAME"]), target=copy)

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
    """A folder under DATA_DIR only this user reads (patient data), removed afterwards.

    The process holds an exclusive ``flock`` on its SCRATCH_OWNER file while it uses
    it; the kernel drops that lock when the process ends however it ends (SIGKILL, OOM
    killer), so ``scratch_sweep`` tells a folder still in use from one left behind.
    """
    folder = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=settings.DATA_DIR))
    try:
        owner = os.open(folder / SCRATCH_OWNER, os.O_CREAT | os.O_RDWR, 0o600)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        fcntl.flock(owner, fcntl.LOCK_EX)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.close(owner)


def scratch_sweep(*, now: datetime | None = None) -> list[Path]:
    """Remove the scratch folders under DATA_DIR that no living backup or restore uses:
    their owner's ``flock`` is free (the process was killed), or they have no owner file
    and were last written more than SCRATCH_UNOWNED_GRACE ago (killed between making the
    folder and locking it; folders of releases before the owner file, named
    LEGACY_SCRATCH_PREFIX, UNFINISHED_AGE ago). A folder in use is never touched: its
    owner holds the lock. Returns the folders removed; never raises (a folder that
    cannot be removed is logged and tried again by the next backup)."""
    data_dir = Path(settings.DATA_DIR)
    moment = now or datetime.now(tz=UTC)
    removed: list[Path] = []
    if not data_dir.is_dir():
        return removed
    for folder in sorted(data_dir.iterdir()):
        try:
            if folder.name.startswith(SCRATCH_PREFIX) and folder.is_dir():
                if _scratch_owner_gone(folder, now=moment):
                    removed.append(folder)
            elif (
                folder.name.startswith(LEGACY_SCRATCH_PREFIX)
                and not folder.name.endswith(".partial")
                and folder.is_dir()
                and _last_written(folder) < (moment - UNFINISHED_AGE).timestamp()
            ):
                _rmtree_gone_ok(folder)
                removed.append(folder)
        except OSError as exc:
            logger.warning("The scratch folder %s could not be removed (%r).", folder, exc)
    return removed


def _scratch_owner_gone(folder: Path, *, now: datetime) -> bool:
    """Remove ``folder`` when its owner is gone (see ``scratch_sweep``); whether it was."""
    try:
        owner = os.open(folder / SCRATCH_OWNER, os.O_RDWR)
    except FileNotFoundError:
        if _last_written(folder) >= (now - SCRATCH_UNOWNED_GRACE).timestamp():
            return False
        _rmtree_gone_ok(folder)
        return True
    try:
        try:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its backup or restore is running
        _rmtree_gone_ok(folder)  # under our lock: nobody takes it over meanwhile
        return True
    finally:
        os.close(owner)


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


def _manifest_parse(source: _Source) -> dict[str, Any]:
    """The backup's manifest, parsed (its files are not read). Raises ApplicationError
    ``backup_invalid`` when it is missing, damaged, or names a file outside the backup."""
    raw = source.manifest_bytes()
    try:
        manifest: dict[str, Any] = json.loads(raw or b"")
        files = {str(name): str(digest) for name, digest in dict(manifest["files"]).items()}
        str(manifest["engine"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ApplicationError(
            "backup_invalid",
            f"{source} is not a RelayPACS backup: its manifest.json is missing or damaged.",
            "Give the folder or bucket prefix that `manage.py backup` made "
            "(relaypacs-backup-<time>).",
        ) from exc
    if any(name in {"", ".", "..", MANIFEST} or Path(name).name != name for name in files):
        raise ApplicationError(
            "backup_invalid",
            f"{source} is not a RelayPACS backup: its manifest names a file outside it.",
            "Restore a backup made by `manage.py backup`.",
        )
    manifest["files"] = files
    return manifest


def _damaged(name: str) -> ApplicationError:
    return ApplicationError(
        "backup_damaged",
        f"The backup's {name} is missing or differs from what was backed up.",
        "Restore another backup, or copy this one again from where it is kept.",
    )


def _manifest(source: _Source) -> dict[str, Any]:
    """The backup's manifest, once every file it lists was read and matches its SHA-256.
    Raises ApplicationError ``backup_invalid`` or ``backup_damaged``."""
    manifest = _manifest_parse(source)
    for name, digest in manifest["files"].items():
        if _stream_sha256(source, name) != digest:
            raise _damaged(name)
    return manifest


def _verified_local(*, source: _Source, manifest: dict[str, Any], scratch: Path) -> _Source:
    """The backup's files on local disk, each matching the manifest's SHA-256: a folder
    backup is checked where it is; a bucket backup is downloaded once into ``scratch``
    (streamed in blocks, hashed on the way), so what is restored is exactly what was
    checked, never a second read of the bucket. Raises ApplicationError
    ``backup_damaged`` (nothing restored yet) or ``backup_bucket_unavailable``."""
    if isinstance(source, _FolderSource):
        for name, digest in manifest["files"].items():
            if _stream_sha256(source, name) != digest:
                raise _damaged(name)
        return source
    for name, digest in manifest["files"].items():
        copied = hashlib.sha256()
        try:
            with source.open(name) as handle, (scratch / name).open("xb") as out:
                while block := handle.read(BLOCK):
                    copied.update(block)
                    out.write(block)
        except FileNotFoundError:
            raise _damaged(name) from None
        if copied.hexdigest() != digest:
            raise _damaged(name)
    return _FolderSource(folder=scratch)


# While a restore writes, the target database holds this one-row table: which backup is
# being restored, since when, and the report store files it writes. A restore cut short
# (an error, a SIGKILL, a power cut) leaves it; the next restore recognises its own
# unfinished work by it and removes that first. pg_restore runs in one transaction, so the
# database holds either this table alone or it and the whole backup.
RESTORE_MARKER_TABLE = "relaypacs_restore_unfinished"


@dataclass(frozen=True)
class UnfinishedRestore:
    """A restore that started and did not finish (its marker is in the database)."""

    backup: str
    started_at: str
    report_names: frozenset[str]

    def sentence(self) -> str:
        return f"A restore of {self.backup} started at {self.started_at} did not finish."


def _restore_marker_sql(*, placeholder: str) -> tuple[str, str, str]:
    return (
        f"DROP TABLE IF EXISTS {RESTORE_MARKER_TABLE}",
        f"CREATE TABLE {RESTORE_MARKER_TABLE} "
        "(backup TEXT NOT NULL, started_at TEXT NOT NULL, report_names TEXT NOT NULL)",
        f"INSERT INTO {RESTORE_MARKER_TABLE} (backup, started_at, report_names) "  # noqa: S608
        f"VALUES ({placeholder}, {placeholder}, {placeholder})",
    )


def _restore_marker_values(*, backup: str, report_names: list[str]) -> list[str]:
    return [backup, datetime.now(tz=UTC).isoformat(), json.dumps(sorted(report_names))]


def _restore_marker_set(*, backup: str, report_names: list[str]) -> None:
    """Write the marker into the target database (committed before anything else)."""
    drop, create, insert = _restore_marker_sql(placeholder="%s")
    with transaction.atomic(), connections["default"].cursor() as cursor:
        cursor.execute(drop)
        cursor.execute(create)
        cursor.execute(insert, _restore_marker_values(backup=backup, report_names=report_names))


def _restore_marker_into_sqlite(*, path: Path, backup: str, report_names: list[str]) -> None:
    """The marker inside the SQLite copy about to replace the target: the online backup
    API replaces the whole file, marker included, so both arrive together."""
    drop, create, insert = _restore_marker_sql(placeholder="?")
    copy = sqlite3.connect(str(path))
    try:
        with copy:
            copy.execute(drop)
            copy.execute(create)
            copy.execute(insert, _restore_marker_values(backup=backup, report_names=report_names))
    finally:
        copy.close()


def _restore_marker_clear() -> None:
    with transaction.atomic(), connections["default"].cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {RESTORE_MARKER_TABLE}")


def _restore_unfinished() -> UnfinishedRestore | None:
    """The marker of a restore that did not finish, when the target database holds one."""
    connection = connections["default"]
    with connection.cursor() as cursor:
        if RESTORE_MARKER_TABLE not in connection.introspection.table_names(cursor):
            return None
        cursor.execute(
            f"SELECT backup, started_at, report_names FROM {RESTORE_MARKER_TABLE}"  # noqa: S608
        )
        row = cursor.fetchone()
    if row is None:  # never written so (created and filled in one transaction)
        return UnfinishedRestore(
            backup="a backup", started_at="an unknown time", report_names=frozenset()
        )
    return UnfinishedRestore(
        backup=str(row[0]), started_at=str(row[1]), report_names=frozenset(json.loads(row[2]))
    )


def _database_tables() -> int:
    """The target database's tables, the unfinished-restore marker left out."""
    connection = connections["default"]
    with connection.cursor() as cursor:
        names = connection.introspection.table_names(cursor)
    return sum(1 for name in names if name != RESTORE_MARKER_TABLE)


def _report_names() -> list[str]:
    from reports import store

    try:
        return [name for name, _ in store.files()]
    except store.ReportStoreUnavailable as exc:
        raise ApplicationError(
            "restore_report_store_unavailable",
            f"The report store ({store.where()}) could not be read. Nothing was restored.",
            "Check that the S3 bucket is reachable with the configured credentials, then "
            "run the restore again.",
            status_code=503,
        ) from exc


def _engine_for(manifest: dict[str, Any]) -> str:
    engine = _engine()
    if manifest["engine"] != engine:
        raise ApplicationError(
            "backup_other_database",
            f"This backup is of a {manifest['engine']} database; this server uses {engine}.",
            "Restore it into a server with the same kind of database.",
        )
    return engine


def restore_plan(*, backup: Path | str) -> BackupPlan:
    """Check the backup (manifest and sums, every file read once, nothing written to
    disk) and look at the target; changes nothing. ``backup`` is a folder or
    ``s3://bucket/prefix/relaypacs-backup-<time>``."""
    source = _source(backup)
    manifest = _manifest(source)
    engine = _engine_for(manifest)
    unfinished = _restore_unfinished()
    return BackupPlan(
        backup=str(source),
        engine=engine,
        created_at=str(manifest["created_at"]),
        database_tables=_database_tables(),
        report_files=len(_report_names()),
        unfinished_restore=unfinished.sentence() if unfinished is not None else None,
    )


@dataclass(frozen=True)
class RestoreOutcome:
    plan: BackupPlan
    # What became of the uploads under way at backup time; None when the database's
    # schema is older than this release (reconciled after `migrate`, see the command).
    uploads: Any
    # The restore cut short that this one found and removed before it began, if any.
    redone: UnfinishedRestore | None = None


def _target_not_empty(*, tables: int, report_files: int) -> ApplicationError:
    return ApplicationError(
        "restore_target_not_empty",
        f"The target is not empty: the database has {tables} tables and "
        f"the report store {report_files} files. Nothing was restored.",
        "Restore into a new, empty database and an empty report store (REPORT_STORAGE_DIR, "
        "or the bucket's reports/ prefix in S3 mode), or empty them once you are sure "
        "they hold nothing you need.",
        status_code=409,
    )


def _unfinished_restore_remove(*, unfinished: UnfinishedRestore) -> None:
    """Remove the report store files the restore ``unfinished`` wrote (each one it was
    writing; anything else there refuses, unchanged). Its tables go in ``_restore_claim``
    (PostgreSQL; SQLite's copy replaces the whole file). Raises ApplicationError
    ``restore_target_not_empty``."""
    from reports import store

    present = _report_names()
    foreign = [name for name in present if name not in unfinished.report_names]
    if foreign:
        raise ApplicationError(
            "restore_target_not_empty",
            f"{unfinished.sentence()} The report store also holds {len(foreign)} files "
            "that restore did not write, so nothing was changed.",
            "Empty the report store once you are sure it holds nothing you need, then run "
            "the restore again.",
            status_code=409,
        )
    if _engine() == "postgresql":
        with connections["default"].cursor() as cursor:
            later = _uploads_after_marker(cursor=cursor, unfinished=unfinished)
        if later:
            raise _uploads_after_restore(unfinished=unfinished, count=later)
    for name in present:
        store.delete(relative=name)


def _uploads_after_restore(*, unfinished: UnfinishedRestore, count: int) -> ApplicationError:
    return ApplicationError(
        "restore_target_not_empty",
        f"{unfinished.sentence()} The database also holds {count} uploads made after it "
        "started (the product ran on it), so nothing was changed.",
        "Keep those uploads if you need them (back up the database with pg_dump), then "
        "empty it and run the restore again.",
        status_code=409,
    )


# Every restore into a PostgreSQL target claims it under this advisory lock (one
# transaction): two restores, or a restore and a `migrate`, never both take the target.
RESTORE_LOCK_KEY = 0x52504143_0001


def _target_taken(*, what: str) -> ApplicationError:
    return ApplicationError(
        "restore_target_taken",
        f"The target database changed while the backup was being checked: {what}. "
        "Nothing was restored.",
        "Make sure no RelayPACS process (web, worker, migrate or another restore) uses "
        "this database, then run the restore again.",
        status_code=409,
    )


def _uploads_after_marker(*, cursor: Any, unfinished: UnfinishedRestore) -> int:
    """Upload sessions created after the unfinished restore began (the product ran on
    the half-restored database): 0 when that cannot be told (no table, no time)."""
    connection = connections["default"]
    if "uploads_uploadsession" not in connection.introspection.table_names(cursor):
        return 0
    try:
        started = datetime.fromisoformat(unfinished.started_at)
    except ValueError:
        return 0
    cursor.execute("SELECT count(*) FROM uploads_uploadsession WHERE created_at > %s", [started])
    return int(cursor.fetchone()[0])


def _restore_claim(*, seen: UnfinishedRestore | None, backup: str, report_names: list[str]) -> None:
    """Claim the PostgreSQL target right before writing to it, in one transaction under
    ``RESTORE_LOCK_KEY``: it still holds no table (``seen`` None) or still the marker
    ``seen`` (then every other table, view and sequence, what that restore wrote, is
    dropped), and this restore's marker is created. Raises ApplicationError
    ``restore_target_taken`` (nothing changed) otherwise."""
    from django.db import DatabaseError

    drop, create, insert = _restore_marker_sql(placeholder="%s")
    connection = connections["default"]
    quote = connection.ops.quote_name
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [RESTORE_LOCK_KEY])
            # And migrate_locked's: a migration under way finishes first (then its tables
            # refuse the claim); one starting after this commit sees the marker.
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATE_LOCK_ID])
            now = _restore_unfinished()
            others = [
                info
                for info in connection.introspection.get_table_list(cursor)
                if info.name != RESTORE_MARKER_TABLE
            ]
            if seen is None:
                if now is not None:
                    raise _target_taken(what="another restore began writing to it")
                if others:
                    raise _target_taken(what=f"it now has {len(others)} tables")
            else:
                if now != seen:
                    raise _target_taken(what="its unfinished restore is no longer the one seen")
                later = _uploads_after_marker(cursor=cursor, unfinished=seen)
                if later:
                    raise _uploads_after_restore(unfinished=seen, count=later)
                for info in others:
                    kind = "VIEW" if info.type == "v" else "TABLE"
                    cursor.execute(f"DROP {kind} IF EXISTS {quote(info.name)} CASCADE")
                cursor.execute(
                    "SELECT sequence_name FROM information_schema.sequences "
                    "WHERE sequence_schema = current_schema()"
                )
                for (name,) in cursor.fetchall():
                    cursor.execute(f"DROP SEQUENCE IF EXISTS {quote(name)} CASCADE")
                cursor.execute(drop)
            cursor.execute(create)  # plain CREATE: a claimer that got here first fails it
            cursor.execute(insert, _restore_marker_values(backup=backup, report_names=report_names))
    except DatabaseError as exc:
        raise _target_taken(what="another process wrote the restore marker") from exc


@contextmanager
def _sqlite_restore_lock() -> Iterator[None]:
    """On SQLite, DATA_DIR/.restore.lock held (flock) for the whole restore."""
    path = Path(settings.DATA_DIR) / RESTORE_LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ApplicationError(
                "restore_running",
                "Another restore of this server is running. Nothing was restored.",
                "Wait for it to finish, then check the database before restoring again.",
                status_code=409,
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _restore_interrupted(*, source: _Source, exc: Exception) -> ApplicationError:
    if isinstance(exc, ApplicationError):
        cause = exc.message
    elif isinstance(exc, OSError):
        cause = f"the report store or the local disk failed ({type(exc).__name__})."
    else:
        cause = f"an unexpected error ({type(exc).__name__})."
    return ApplicationError(
        "restore_interrupted",
        f"The restore of {source} stopped part way: {cause} The database and the report "
        "store now hold part of the backup, marked as an unfinished restore.",
        "Do not start web or worker. Correct the cause, then run `manage.py restore` "
        "again (with this backup or another): it removes what the unfinished restore "
        "wrote and starts over.",
        status_code=500,
    )


def backup_restore(*, backup: Path | str) -> RestoreOutcome:
    """Restore ``backup`` into an empty database and an empty report store, then
    reconcile the uploads that were under way with the upload storage
    (``uploads.services.recovery.uploads_reconcile``).

    Refuses (ApplicationError 409, nothing changed) when the database has any table or
    the report store any file, unless they are what a restore cut short left (its marker,
    ``RESTORE_MARKER_TABLE``, is in the database): that is removed first and the restore
    starts over. Every file is checked against the manifest before anything is written;
    a bucket backup is downloaded once into a private scratch folder under DATA_DIR
    (as much free space as the backup's size; removed afterwards) and restored from
    there. Right before writing, the target is claimed (``_restore_claim`` on
    PostgreSQL; on SQLite ``DATA_DIR/.restore.lock`` is held throughout): one that changed
    since it was checked refuses, ``restore_target_taken``, untouched. A failure once
    writing began raises ApplicationError ``restore_interrupted`` and leaves the marker,
    so running the restore again redoes it cleanly.
    """
    source = _source(backup)
    manifest = _manifest_parse(source)
    engine = _engine_for(manifest)
    scratch_sweep()
    if engine == "sqlite":
        with _sqlite_restore_lock():
            return _backup_restore(source=source, manifest=manifest, engine=engine)
    return _backup_restore(source=source, manifest=manifest, engine=engine)


def _backup_restore(*, source: _Source, manifest: dict[str, Any], engine: str) -> RestoreOutcome:
    unfinished = _restore_unfinished()
    tables, present = _database_tables(), _report_names()
    if unfinished is None and (tables or present):
        raise _target_not_empty(tables=tables, report_files=len(present))
    digests: dict[str, str] | None = manifest.get("report_files")
    with _private_tempdir() as scratch:
        local = _verified_local(source=source, manifest=manifest, scratch=scratch)
        report_names = sorted(digests) if digests is not None else _tar_names(local)
        if unfinished is not None:
            _unfinished_restore_remove(unfinished=unfinished)
        if engine == "postgresql":
            _restore_claim(seen=unfinished, backup=str(source), report_names=report_names)
        else:
            # The restore lock keeps other restores out; a process that wrote meanwhile
            # (a migrate) is seen here, right before the marker.
            if _restore_unfinished() != unfinished or (unfinished is None and _database_tables()):
                raise _target_taken(what="it changed since it was first checked")
            _restore_marker_set(backup=str(source), report_names=report_names)
        try:
            _database_restore(
                local=local, engine=engine, scratch=scratch, backup=str(source), names=report_names
            )
            with local.open("reports.tar") as tar:
                _reports_tar_restore_from(tar, digests=digests)
        except Exception as exc:
            raise _restore_interrupted(source=source, exc=exc) from exc
        _restore_marker_clear()
    plan = BackupPlan(
        backup=str(source),
        engine=engine,
        created_at=str(manifest["created_at"]),
        database_tables=0,
        report_files=0,
    )
    return RestoreOutcome(plan=plan, uploads=_uploads_reconcile_if_current(), redone=unfinished)


def _tar_names(local: _Source) -> list[str]:
    """The regular files of the backup's reports.tar (backups made before the manifest
    recorded them), read through once."""
    with local.open("reports.tar") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        return sorted(member.name for member in tar if member.isfile())


def _database_restore(
    *, local: _Source, engine: str, scratch: Path, backup: str, names: list[str]
) -> None:
    """The database of the (checked, local) backup into the target: pg_restore in one
    transaction, or SQLite's online backup API from a copy that carries the marker."""
    db = _database()
    if engine == "postgresql":
        connections["default"].close()
        args, env = _pg_args(db)
        with local.open("database.dump") as dump:
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
        return
    copy = scratch / "restore.sqlite3"
    with local.open("database.sqlite3") as handle, copy.open("xb") as out:
        shutil.copyfileobj(handle, out, BLOCK)
    _restore_marker_into_sqlite(path=copy, backup=backup, report_names=names)
    connections["default"].close()
    _sqlite_copy(source=str(copy), target=Path(str(db["NAME"])))


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
