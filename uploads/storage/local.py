"""Upload bytes on local disk: the embedded default (``UPLOAD_STORAGE=local``).

An upload is one sparse assembly file, ``<UPLOAD_STORAGE_DIR>/<id>/stream.bin``, sized at
init; each chunk is written straight to its offset, so there is no merge copy. Files of
the manifest are byte ranges of it, read back through ``open_range``. Derived files
(unpacked, converted, re-wrapped) live in ``<id>/work/``. Called only through
``uploads.storage``, which picks this backend or the S3 one.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from django.conf import settings

from .streams import SeekableRaw, StoredChunk

logger = logging.getLogger(__name__)

# Copy granularity for chunk writes and range reads: large enough for few syscalls,
# small enough that memory stays flat whatever the file size.
BLOCK_SIZE = 1024 * 1024


def _upload_dir(upload_id: uuid.UUID) -> Path:
    return Path(settings.UPLOAD_STORAGE_DIR) / str(upload_id)


def _stream_path(upload_id: uuid.UUID) -> Path:
    return _upload_dir(upload_id) / "stream.bin"


def storage_root() -> Path:
    root = Path(settings.UPLOAD_STORAGE_DIR)
    root.mkdir(parents=True, exist_ok=True)
    return root


def free_bytes() -> int:
    return shutil.disk_usage(storage_root()).free


def stream_create(*, upload_id: uuid.UUID, size: int) -> None:
    """Create the (sparse) assembly file of ``size`` bytes. Idempotent."""
    directory = _upload_dir(upload_id)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = _stream_path(upload_id)
    with open(path, "ab") as handle:
        handle.truncate(size)


def stream_exists(*, upload_id: uuid.UUID) -> bool:
    return _stream_path(upload_id).exists()


def chunks_present(
    *,
    upload_id: uuid.UUID,
    chunks: Mapping[int, StoredChunk],
    verify_offsets: Collection[int] = frozenset(),
) -> set[int]:
    """The offsets of ``chunks`` whose bytes the assembly file holds: the file reaches the
    chunk's end, and a chunk whose range holds a hole, or whose offset is in
    ``verify_offsets``, reads back with the chunk's MD5.

    The file is sparse until written, so a chunk whose write never reached the disk (a
    crash, a copied-back folder) reads as a hole. A hole alone proves nothing, though:
    compressing filesystems (ZFS) and sparse copies (``rsync -S``, ``cp --sparse``) turn
    runs of zeros in written data into holes too. So a chunk without a hole costs one
    ``lseek``; one with a hole is read back and its MD5 compared (rare, bounded by the
    chunk size, read in blocks). No hole proves nothing either where the filesystem does
    not report holes (NFS before 4.2, FUSE, vfat/exFAT: all data) or a crash leaves
    allocated blocks with stale bytes (ext4 ``data=writeback``): the caller names in
    ``verify_offsets`` the chunks that may have been lost that way (``write_maybe_lost``),
    and those are read back whatever ``lseek`` says.

    Raises ``OSError`` when a read-back fails (the disk cannot give the bytes back).
    """
    try:
        fd = os.open(_stream_path(upload_id), os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return set()
    try:
        facts = os.fstat(fd)
        if not stat.S_ISREG(facts.st_mode):
            return set()
        return {
            offset
            for offset, chunk in chunks.items()
            if offset >= 0
            and offset + chunk.size <= facts.st_size
            and (
                (offset not in verify_offsets and not _hole_within(fd, offset, offset + chunk.size))
                or _range_md5(fd, offset, chunk.size) == chunk.md5
            )
        }
    finally:
        os.close(fd)


# A chunk received this long after the boot time is still read back: the boot time is
# the wall clock now less the time since boot, so a clock stepped after a boot (NTP
# correcting a drifted RTC, seconds on a machine with a working one) moves it; the chunks
# of a machine's first minutes up are few, so reading them back costs little.
BOOT_CLOCK_MARGIN_SECONDS = 300


def booted_at() -> datetime | None:
    """When this machine last booted (Linux: the wall clock less ``CLOCK_BOOTTIME``, which
    is how the kernel computes ``/proc/stat``'s ``btime``, without reading a file), less
    plus ``BOOT_CLOCK_MARGIN_SECONDS``; None where it cannot be told (no ``CLOCK_BOOTTIME``:
    not Linux). Computed at each call (two clock reads), so that a clock NTP corrects
    after the process started moves it as it moves ``received_at``."""
    try:
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return None
    # Later by the margin: chunks received up to the margin after the boot count as before.
    return datetime.fromtimestamp(time.time() - since_boot + BOOT_CLOCK_MARGIN_SECONDS, tz=UTC)


def writes_maybe_lost(*, written_at: Mapping[int, datetime | None]) -> set[int]:
    """The offsets of ``written_at`` (chunk offset -> when its ``stream_write`` had
    returned: the row's ``received_at``) whose bytes a crash may have lost without a hole
    showing it (see ``chunks_present``). Page-cache writes are lost only by a reboot (a
    power cut, a kernel crash; a process that dies leaves them to the kernel), so only a
    write made before this machine's boot. Where the boot time is unknown (not Linux),
    every write may have been: the read-back is the only check that works on every
    filesystem, and reading an upload back at complete on such a machine (a developer's
    laptop; production runs on Linux) is the safe price."""
    booted = booted_at()
    if booted is None:
        return set(written_at)
    return {offset for offset, at in written_at.items() if at is None or at < booted}


def _hole_within(fd: int, start: int, end: int) -> bool:
    """Whether ``[start, end)`` of the file holds a hole (never written, or zeros the
    filesystem stores as one)."""
    if end <= start:
        return False
    try:
        return os.lseek(fd, start, os.SEEK_HOLE) < end
    except OSError:  # the filesystem cannot tell (EINVAL): trust the size
        return False


def _range_md5(fd: int, offset: int, size: int) -> str:
    """The hex MD5 of ``size`` bytes of the file from ``offset``, read in blocks. Raises
    ``OSError`` when a read fails."""
    digest = hashlib.md5(usedforsecurity=False)
    done = 0
    while done < size:
        block = os.pread(fd, min(BLOCK_SIZE, size - done), offset + done)
        if not block:
            break
        digest.update(block)
        done += len(block)
    return digest.hexdigest()


def stream_write(*, upload_id: uuid.UUID, offset: int, data: bytes | memoryview) -> None:
    """Write ``data`` at ``offset`` of the assembly file: flushed to disk before this
    returns with ``UPLOAD_FSYNC=chunk``; otherwise left in the page cache for
    ``stream_flush`` (a power cut before it can lose the write: ``chunks_present`` then
    finds the chunk missing).

    Safe beside concurrent writers of other ranges (positional writes, no shared offset).
    """
    fd = os.open(_stream_path(upload_id), os.O_WRONLY)
    try:
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.pwrite(fd, view[written : written + BLOCK_SIZE], offset + written)
        if settings.UPLOAD_FSYNC == "chunk":
            os.fdatasync(fd)
    finally:
        os.close(fd)


def stream_flush(*, upload_id: uuid.UUID) -> None:
    """Flush the assembly file's data (every write of every process: they share the page
    cache), then its folder and the storage root, so that the file, its size and its
    folder survive a power cut too (one ``fdatasync`` and two folder ``fsync``s).
    Nothing with ``UPLOAD_FSYNC=off``. A missing assembly file is not an error (there is
    nothing to flush; ``chunks_present`` finds its chunks missing). Idempotent. Raises
    ``OSError`` when the disk refuses the flush."""
    if settings.UPLOAD_FSYNC == "off":
        return
    try:
        fd = os.open(_stream_path(upload_id), os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
    # A cancel that committed meanwhile removes the folder: nothing is left to flush.
    if _directory_sync(_upload_dir(upload_id)):
        _directory_sync(Path(settings.UPLOAD_STORAGE_DIR))


def _directory_sync(directory: Path) -> bool:
    """fsync a folder, so that the entries created in it are on disk; False (nothing done)
    when the folder is gone."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return False
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


# How long a complete waits for another one's flush of the same upload (gigabytes of page
# cache can take seconds) before it answers 503 storage_unavailable.
COMPLETE_LOCK_WAIT_SECONDS = 20


class CompleteLockBusy(OSError):
    """Another complete of the upload held its lock for COMPLETE_LOCK_WAIT_SECONDS."""


@contextmanager
def stream_complete_lock(*, upload_id: uuid.UUID) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the upload's assembly file for the block (waiting
    for it), so that one complete's flush, check and forget or take is done before the
    next one flushes: Linux reports a failed write-back to the first ``fsync`` only, and a
    second complete whose flush then succeeds must not take the upload before the first
    has forgotten its chunks. Every process of this machine shares the lock (a lock of
    the open file, not of the process). No lock is needed without an assembly file (there
    is nothing to flush). Take it before any database lock, never inside a transaction."""
    try:
        # Opened for writing: NFS emulates flock with byte-range locks, and an exclusive
        # one needs a file open for writing.
        fd = os.open(_stream_path(upload_id), os.O_RDWR)
    except (FileNotFoundError, NotADirectoryError):
        yield
        return
    try:
        deadline = time.monotonic() + COMPLETE_LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    # A web thread must not wait for ever behind another complete's flush
                    # (a hung disk): the client completes again later.
                    raise CompleteLockBusy() from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


class _RangeRaw(SeekableRaw):
    """A read-only, seekable window ``[offset, offset+size)`` of a file (positional reads)."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._offset = offset
        self._size = size
        self._pos = 0
        self.name = f"range:{offset}+{size}"

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        remaining = self._size - self._pos
        if remaining <= 0:
            return 0
        # Straight into the caller's buffer: os.pread would allocate a bytes object per
        # call only to copy it here (a forwarding worker reads every byte of a study).
        with memoryview(buffer) as view, view.cast("B") as octets:
            read = os.preadv(
                self._fd, [octets[: min(len(octets), remaining)]], self._offset + self._pos
            )
        self._pos += read
        return read

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def open_range(*, upload_id: uuid.UUID, offset: int, size: int) -> BinaryIO:
    """A buffered, seekable reader of one file of the upload; the caller closes it."""
    raw = _RangeRaw(_stream_path(upload_id), offset, size)
    return io.BufferedReader(raw, buffer_size=64 * 1024)  # type: ignore[return-value]


def work_dir(*, upload_id: uuid.UUID) -> Path:
    """The folder for files derived from the upload (unpacked, converted, re-wrapped)."""
    return _upload_dir(upload_id) / "work"


def work_reset(*, upload_id: uuid.UUID) -> Path:
    """Empty the work folder (a re-run of processing starts clean) and return it."""
    directory = work_dir(upload_id=upload_id)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    return directory


def open_member(*, upload_id: uuid.UUID, offset: int, size: int, path: str = "") -> BinaryIO:
    """A reader of one file of the upload: a work-folder file when ``path`` is set, else a
    byte range of the upload stream. The caller closes it."""
    if path:
        return open(work_dir(upload_id=upload_id) / path, "rb")  # noqa: SIM115
    return open_range(upload_id=upload_id, offset=offset, size=size)


def stream_delete(*, upload_id: uuid.UUID) -> bool:
    """Remove everything stored for the upload; True once nothing of it is left.

    Idempotent (an upload with no folder is deleted). Never raises an ``OSError``: a
    failure is logged with the upload id and the error number only (paths in the work
    folder come from archive entry names, which can name the patient) and returns False,
    so that the caller keeps the upload marked as still holding bytes and retries.
    """
    directory = _upload_dir(upload_id)
    try:
        shutil.rmtree(directory)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if directory.exists():
            logger.error(
                "could not delete the files of upload %s (%s); deletion will be retried",
                upload_id,
                errno.errorcode.get(exc.errno or 0, type(exc).__name__),
            )
            return False
    return True


@contextmanager
def stream_removed_on_error(*, upload_id: uuid.UUID) -> Iterator[None]:
    """Remove the upload's folder when the block raises, then let the exception go on.

    Around the transaction that creates an upload's row and its stream: should it roll
    back (or its commit fail) after the stream was created, no folder stays behind
    without an upload. An outer transaction rolled back later is not seen here; the orphan
    sweep removes that folder.
    """
    try:
        yield
    except BaseException:
        stream_delete(upload_id=upload_id)
        raise


def stored_uploads() -> Iterator[tuple[uuid.UUID, datetime]]:
    """Each upload folder under the storage root, with when the folder last changed.

    Entries whose name is not an upload id (a probe file of ``storage_check``, anything an
    operator put there) are not upload folders and are left out.
    """
    with os.scandir(storage_root()) as entries:
        for entry in entries:
            try:
                upload_id = uuid.UUID(entry.name)
                if str(upload_id) != entry.name or not entry.is_dir(follow_symlinks=False):
                    continue
                changed = entry.stat(follow_symlinks=False).st_mtime
            except (ValueError, OSError):  # not an id, or removed meanwhile
                continue
            yield upload_id, datetime.fromtimestamp(changed, tz=UTC)


def storage_check() -> tuple[str, str]:
    """``("ok"|"failing", detail)``: can we write to the upload storage?"""
    try:
        root = storage_root()
        probe = root / f".probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        return "failing", f"upload storage is not writable: {exc.strerror}"
    return "ok", f"{free_bytes() // (1024 * 1024)} MiB free"


def work_publish(*, upload_id: uuid.UUID) -> None:
    """Nothing to do: the work folder is where every reader (one node) finds the files."""


@contextmanager
def work_scope(*, upload_id: uuid.UUID) -> Iterator[None]:
    """Nothing to do: the work folder is the derived files' durable home on local disk."""
    yield
