"""Unpacking ZIP and RAR archives safely, entry by entry, as streams.

Nothing here trusts an archive: entry paths are reduced to safe relative paths under the
destination folder, links (symbolic or hard) are never created or followed, files are
created with O_EXCL|O_NOFOLLOW, and size, ratio and entry-count limits are enforced while
bytes are written, so a zip bomb is stopped before it fills the disk.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local header, or an empty archive
RAR4_MAGIC = b"Rar!\x1a\x07\x00"
RAR5_MAGIC = b"Rar!\x1a\x07\x01\x00"
COPY_BLOCK = 1024 * 1024
# Small archives of text or zeros compress far beyond any ratio; only judge the ratio once
# this much has come out of one archive.
RATIO_FLOOR_BYTES = 8 * 1024 * 1024


class ArchiveError(Exception):
    """The archive as a whole cannot be unpacked; ``code`` says why."""

    def __init__(self, code: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class ArchiveLimits:
    max_total_bytes: int
    max_ratio: float
    max_entries: int


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
    """Writes entries under ``dest`` while enforcing the limits across one archive."""

    def __init__(
        self, dest: Path, archive_size: int, limits: ArchiveLimits, result: Extracted
    ) -> None:
        self.dest = dest
        self.archive_size = max(archive_size, 1)
        self.limits = limits
        self.result = result
        self.entries = 0

    def count_entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise ArchiveError(
                "archive_too_many_entries",
                f"The archive holds more than {self.limits.max_entries} entries, the most "
                "RelayPACS unpacks from one archive.",
                "Split the study into several archives, or upload the folder itself.",
            )

    def _check(self, total: int) -> None:
        if total > self.limits.max_total_bytes:
            raise ArchiveError(
                "archive_too_large",
                f"The archive unpacks to more than {self.limits.max_total_bytes // 1024**2} MiB, "
                "the most RelayPACS accepts.",
                "Send the study in several smaller archives.",
            )
        if total > RATIO_FLOOR_BYTES and total > self.limits.max_ratio * self.archive_size:
            raise ArchiveError(
                "archive_ratio_exceeded",
                f"The archive expands more than {self.limits.max_ratio:g} times its size, "
                "which images never do: it looks like a zip bomb and was not unpacked.",
                "If the archive is genuine, upload its files without compressing them.",
            )

    def write(self, name: str, relpath: str, blocks: Iterator[bytes]) -> bool:
        """Write one entry; False (and listed as skipped) when the name is taken."""
        target = self.dest / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        # The folder must still be inside dest: we never create links, but be certain.
        if not str(target.parent.resolve()).startswith(str(self.dest.resolve())):
            self.result.skipped.append((name, "its path leaves the archive's folder"))
            return False
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            self.result.skipped.append((name, "another entry has the same name"))
            return False
        written = 0
        try:
            for block in blocks:
                view = memoryview(block)
                while view:
                    count = os.write(fd, view)
                    view = view[count:]
                written += len(block)
                self.result.total_bytes += len(block)
                self._check(self.result.total_bytes)
        finally:
            os.close(fd)
        self.result.files.append((name, relpath, written))
        return True


def _zip_blocks(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    with archive.open(info) as source:
        while block := source.read(COPY_BLOCK):
            yield block


def expand_zip(
    *, stream: BinaryIO, archive_size: int, dest: Path, limits: ArchiveLimits
) -> Extracted:
    """Unpack a ZIP (stored/deflate, ZIP64, CP437 or UTF-8 names) under ``dest``."""
    result = Extracted()
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise ArchiveError(
            "archive_corrupt",
            "The ZIP archive is damaged and could not be opened.",
            "Create the archive again from the original files, or upload the files themselves.",
        ) from exc
    writer = _Writer(dest, archive_size, limits, result)
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
            try:
                writer.write(info.filename, relpath, _zip_blocks(archive, info))
            except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as exc:
                if isinstance(exc, NotImplementedError):
                    raise ArchiveError(
                        "archive_unsupported",
                        "The ZIP archive uses a compression method RelayPACS cannot read.",
                        "Create the archive again with standard (deflate) compression.",
                    ) from exc
                raise ArchiveError(
                    "archive_corrupt",
                    "The ZIP archive is damaged: an entry could not be read completely.",
                    "Create the archive again from the original files, or upload the files themselves.",
                ) from exc
    return result


def expand_rar(
    *, stream: BinaryIO, archive_size: int, dest: Path, limits: ArchiveLimits, version: str
) -> Extracted:
    """Unpack a RAR 4 or RAR 5 archive under ``dest``.

    Headers are inspected with rarfile first (password, links, RAR 4 solid); data is read
    with libarchive entry by entry. An entry whose path passes through a link entry makes
    the whole archive ``unsafe_archive``; any extraction error is fatal for the archive.
    """
    import libarchive
    import rarfile

    result = Extracted()
    try:
        headers = rarfile.RarFile(stream)
        infos = headers.infolist()
        encrypted = headers.needs_password() or any(i.needs_password() for i in infos)
        solid = headers.is_solid()
    except (rarfile.Error, EOFError, ValueError) as exc:
        raise ArchiveError(
            "archive_corrupt",
            "The RAR archive is damaged and could not be opened.",
            "Create the archive again, preferably as ZIP, or upload the files themselves.",
        ) from exc
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
    writer = _Writer(dest, archive_size, limits, result)
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
    except libarchive.ArchiveError as exc:
        raise ArchiveError(
            "archive_corrupt",
            "The RAR archive could not be unpacked completely.",
            "Create the archive again, preferably as ZIP, or upload the files themselves.",
        ) from exc
    return result
