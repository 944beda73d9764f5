"""Unpacking ZIP and RAR archives safely, entry by entry, as streams.

Nothing here trusts an archive: entry paths are reduced to safe relative paths under the
destination folder, links (symbolic or hard) are never created or followed, files are
created with O_EXCL|O_NOFOLLOW, and size, ratio and entry-count limits are enforced while
bytes are written, so a zip bomb is stopped before it fills the disk. The limits belong to
the whole upload (``ArchiveBudget``): every archive in it, nested ones included, draws on
the same budget, so a zip of zips cannot multiply it.

Entry names are never put in an exception message: CDs name folders after patients, and
exception messages end up in logs.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local header, or an empty archive
RAR4_MAGIC = b"Rar!\x1a\x07\x00"
RAR5_MAGIC = b"Rar!\x1a\x07\x01\x00"
COPY_BLOCK = 1024 * 1024
# Small archives of text or zeros compress far beyond any ratio; only judge the ratio once
# this much has come out of the upload's archives.
RATIO_FLOOR_BYTES = 8 * 1024 * 1024
# Creating an entry fails with these when its name, not the server, is the problem (too
# long for the file system, or a file and a folder of the same name): the entry is skipped.
NAME_ERRNOS = {errno.ENAMETOOLONG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EILSEQ}


class ArchiveError(Exception):
    """The archive as a whole cannot be unpacked; ``code`` says why."""

    def __init__(self, code: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint


class ArchiveLimitExceeded(ArchiveError):
    """The upload's archives together went over one of the limits: the whole upload is
    refused, whatever else it holds."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_total_bytes: int
    max_ratio: float
    max_entries: int


@dataclass
class ArchiveBudget:
    """The unpacking limits of one upload, shared by all its archives.

    ``received_bytes`` is the size of the outermost archives as uploaded (the caller adds
    each with ``add_received`` before unpacking it); ``expanded_bytes`` counts every byte
    written while unpacking, nested archives and their contents alike (that is the disk
    used); ``entries`` every entry of every archive. The ratio is judged as expanded bytes
    against received bytes, so an archive inside an archive gains nothing.
    """

    limits: ArchiveLimits
    received_bytes: int = 0
    expanded_bytes: int = 0
    entries: int = 0

    def add_received(self, size: int) -> None:
        self.received_bytes += size

    def count_entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise ArchiveLimitExceeded(
                "archive_too_many_entries",
                f"The archives in this upload hold more than {self.limits.max_entries} "
                "entries together, the most RelayPACS unpacks for one upload.",
                "Split the study into several uploads, or upload the folder itself.",
            )

    def count_bytes(self, size: int) -> None:
        self.expanded_bytes += size
        total = self.expanded_bytes
        if total > self.limits.max_total_bytes:
            raise ArchiveLimitExceeded(
                "archive_too_large",
                "The archives in this upload unpack to more than "
                f"{self.limits.max_total_bytes // 1024**2} MiB together, the most RelayPACS "
                "accepts for one upload.",
                "Send the study in several smaller uploads.",
            )
        if total > RATIO_FLOOR_BYTES and total > self.limits.max_ratio * max(
            self.received_bytes, 1
        ):
            raise ArchiveLimitExceeded(
                "archive_ratio_exceeded",
                f"The archives in this upload expand more than {self.limits.max_ratio:g} "
                "times their size, which images never do: it looks like a zip bomb and was "
                "not unpacked.",
                "If the archive is genuine, upload its files without compressing them.",
            )


@dataclass
class Extracted:
    """What came out of one archive: files written (name in archive, path relative to the
    destination, size) and entries skipped with their reason."""

    files: list[tuple[str, str, int]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total_bytes: int = 0


def archive_kind(head: bytes) -> str | None:
    """ "zip", "rar4", "rar5" or None, from a file's first bytes."""
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(RAR5_MAGIC):
        return "rar5"
    if head.startswith(RAR4_MAGIC):
        return "rar4"
    return None


def safe_relative_path(name: str) -> str | None:
    """A normalised relative path for an entry name, or None when it would leave the
    destination (absolute, drive letter, ``..``) or is empty."""
    name = name.replace("\\", "/")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    if any("\x00" in p for p in parts):
        return None
    return "/".join(parts)


class _Writer:
    """Writes entries under ``dest``, drawing on the upload's ``budget``."""

    def __init__(self, dest: Path, budget: ArchiveBudget, result: Extracted) -> None:
        self.dest = dest
        self.budget = budget
        self.result = result

    def count_entry(self) -> None:
        self.budget.count_entry()

    def _create(self, name: str, relpath: str) -> int | None:
        """The new entry's file descriptor, or None (and listed as skipped) when its name
        cannot be stored. Other errors (a full disk) are raised without the path."""
        target = self.dest / relpath
        try:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                self.result.skipped.append(
                    (name, "a file and a folder of the archive share its path")
                )
                return None
            # The folder must still be inside dest: we never create links, but be certain.
            if not str(target.parent.resolve()).startswith(str(self.dest.resolve())):
                self.result.skipped.append((name, "its path leaves the archive's folder"))
                return None
            return os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            self.result.skipped.append((name, "another entry has the same name"))
        except UnicodeError:
            self.result.skipped.append((name, "its name cannot be stored on the server"))
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                self.result.skipped.append((name, "its name is too long to be stored"))
            elif exc.errno in NAME_ERRNOS:
                self.result.skipped.append(
                    (name, "a file and a folder of the archive share its path")
                )
            else:
                raise OSError(exc.errno, exc.strerror) from None  # no path: it names a patient
        return None

    def write(self, name: str, relpath: str, blocks: Iterator[bytes]) -> bool:
        """Write one entry; False (and listed as skipped) when its name cannot be used."""
        fd = self._create(name, relpath)
        if fd is None:
            return False
        written = 0
        try:
            for block in blocks:
                view = memoryview(block)
                try:
                    while view:
                        count = os.write(fd, view)
                        view = view[count:]
                except OSError as exc:
                    raise OSError(exc.errno, exc.strerror) from None
                written += len(block)
                self.result.total_bytes += len(block)
                self.budget.count_bytes(len(block))
        finally:
            os.close(fd)
        self.result.files.append((name, relpath, written))
        return True


def _zip_blocks(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """The entry's bytes; a damaged entry raises ArchiveError (the entry is not named)."""
    try:
        with archive.open(info) as source:
            while block := source.read(COPY_BLOCK):
                yield block
    except NotImplementedError:
        raise ArchiveError(
            "archive_unsupported",
            "The ZIP archive uses a compression method RelayPACS cannot read.",
            "Create the archive again with standard (deflate) compression.",
        ) from None
    except (zipfile.BadZipFile, EOFError, zlib.error, ValueError):
        raise ArchiveError(
            "archive_corrupt",
            "The ZIP archive is damaged: an entry could not be read completely.",
            "Create the archive again from the original files, or upload the files themselves.",
        ) from None


def expand_zip(*, stream: BinaryIO, dest: Path, budget: ArchiveBudget) -> Extracted:
    """Unpack a ZIP (stored/deflate, ZIP64, CP437 or UTF-8 names) under ``dest``.

    Raises ArchiveError for the archive as a whole (ArchiveLimitExceeded once the upload's
    ``budget`` is spent); entries that cannot be stored are skipped and listed.
    """
    result = Extracted()
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
        raise ArchiveError(
            "archive_corrupt",
            "The ZIP archive is damaged and could not be opened.",
            "Create the archive again from the original files, or upload the files themselves.",
        ) from None
    writer = _Writer(dest, budget, result)
    with archive:
        if any(info.flag_bits & 0x1 for info in archive.infolist()):
            raise ArchiveError(
                "archive_encrypted",
                "The ZIP archive is protected by a password, so RelayPACS cannot read it.",
                "Create the archive again without a password, or upload the files themselves.",
            )
        for info in archive.infolist():
            writer.count_entry()
            if info.is_dir():
                continue
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                result.skipped.append(
                    (info.filename, "a link, not a file (links are never followed)")
                )
                continue
            relpath = safe_relative_path(info.filename)
            if relpath is None:
                result.skipped.append((info.filename, "its path leaves the archive's folder"))
                continue
            writer.write(info.filename, relpath, _zip_blocks(archive, info))
    return result


def expand_rar(*, stream: BinaryIO, dest: Path, budget: ArchiveBudget, version: str) -> Extracted:
    """Unpack a RAR 4 or RAR 5 archive under ``dest``.

    Headers are inspected with rarfile first (password, links, RAR 4 solid); data is read
    with libarchive entry by entry. An entry whose path passes through a link entry makes
    the whole archive ``unsafe_archive``; any extraction error is fatal for the archive.
    Entries draw on the upload's ``budget`` like those of a ZIP.
    """
    import libarchive
    import rarfile

    result = Extracted()
    try:
        headers = rarfile.RarFile(stream)
        infos = headers.infolist()
        encrypted = headers.needs_password() or any(i.needs_password() for i in infos)
        solid = headers.is_solid()
    except (rarfile.Error, EOFError, ValueError):
        raise ArchiveError(
            "archive_corrupt",
            "The RAR archive is damaged and could not be opened.",
            "Create the archive again, preferably as ZIP, or upload the files themselves.",
        ) from None
    if encrypted:
        raise ArchiveError(
            "archive_encrypted",
            "The RAR archive is protected by a password, so RelayPACS cannot read it.",
            "Create the archive again without a password, or upload the files themselves.",
        )
    if version == "rar4" and solid:
        raise ArchiveError(
            "archive_unsupported",
            "This is a solid RAR 4 archive, a kind no free software can unpack.",
            "Create the archive again as ZIP (or RAR 5), or upload the files themselves.",
        )
    links = {i.filename.rstrip("/") for i in infos if i.is_symlink() or i.file_redir}
    for info in infos:
        name = info.filename.rstrip("/")
        if any(name.startswith(link + "/") for link in links):
            raise ArchiveError(
                "unsafe_archive",
                "The archive tries to write through a link it contains (a known attack), so "
                "nothing of it was unpacked.",
                "Do not open this archive elsewhere either; ask the sender for the images "
                "as plain files or a new archive.",
            )
    writer = _Writer(dest, budget, result)
    stream.seek(0)
    try:
        with libarchive.stream_reader(stream) as archive:
            for entry in archive:
                writer.count_entry()
                name = str(entry.pathname)
                if entry.isdir:
                    continue
                if entry.issym or entry.islnk or name.rstrip("/") in links:
                    result.skipped.append((name, "a link, not a file (links are never followed)"))
                    continue
                if not entry.isfile:
                    result.skipped.append((name, "not a regular file"))
                    continue
                relpath = safe_relative_path(name)
                if relpath is None:
                    result.skipped.append((name, "its path leaves the archive's folder"))
                    continue
                writer.write(name, relpath, iter(entry.get_blocks()))
    except libarchive.ArchiveError:
        raise ArchiveError(
            "archive_corrupt",
            "The RAR archive could not be unpacked completely.",
            "Create the archive again, preferably as ZIP, or upload the files themselves.",
        ) from None
    return result
