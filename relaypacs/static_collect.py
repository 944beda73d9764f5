"""``collectstatic`` only when the static files changed since the last collection.

Collecting compresses every file (gzip and Brotli, WhiteNoise's storage) and takes about
30 s of CPU on a 2-core machine, at every start of ``manage.py serve``: most starts
collect exactly what is already there. So the sources are fingerprinted first (each file
the finders list, with its size and modification time, the storage backend that writes
them and the versions of Django and WhiteNoise), and collection is skipped when
STATIC_ROOT holds a collection of the same fingerprint whose files are all there, each of
its source's size. Several processes starting at once on one STATIC_ROOT (nodes sharing a
volume, or a test session's products) take turns under a file lock: the first collects,
the others find it done.

The marker and the lock live in STATIC_ROOT itself, so WhiteNoise serves them
(``/static/.relaypacs-collected``, a SHA-256 digest, and an empty lock file). That is
harmless: the digest reveals none of its inputs (names, sizes and nanosecond modification
times of public static files, two version numbers). And it is the one place every
collector into this STATIC_ROOT sees: nodes sharing the volume (and the tests' products)
each have a DATA_DIR of their own, so a lock kept there would not exclude them, and
STATIC_ROOT's parent need not be writable (the root of a mounted volume). No source can
overwrite them: the finders never list names that start with a dot (staticfiles' default
``.*`` ignore pattern).

The collected files are not flushed to disk (a flush per file, thousands of them, at
every collection); only the marker is, after them. A kill or power cut mid-collection
leaves no marker (it is removed, durably, before collecting begins), and a collected file
a power cut left short after the marker was written has the wrong size: either way the
next start collects again. Not detected: a compressed variant (``.gz``, ``.br``) a power
cut left short within the seconds after a collection; deleting the marker makes the next
start collect again.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import django
from django.apps import apps
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.core.management.base import CommandError

# In STATIC_ROOT: the fingerprint of the collection there (written last, once it is whole)
# and the lock collectors take turns under.
FINGERPRINT_FILE = ".relaypacs-collected"
LOCK_FILE = ".relaypacs-collect.lock"
# A collection takes some 30 s of CPU on a loaded 2-core machine: one that holds the lock
# for ten minutes is stuck, and the waiting start stops with a sentence instead of
# hanging for ever.
LOCK_WAIT_SECONDS = 600
# How often a waiting start tries the lock again.
LOCK_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class StaticSource:
    """One file collectstatic copies: its name in STATIC_ROOT and its source's facts."""

    name: str
    size: int
    mtime_ns: int


def static_sources(*, ignore_patterns: Sequence[str]) -> list[StaticSource]:
    """What ``collectstatic`` with ``ignore_patterns`` copies, sorted by name: for each name
    the first finder's file, as collectstatic keeps the first it finds."""
    default_ignored = apps.get_app_config("staticfiles").ignore_patterns  # type: ignore[attr-defined]
    patterns = [*default_ignored, *ignore_patterns]
    found: dict[str, StaticSource] = {}
    for finder in finders.get_finders():
        for path, storage in finder.list(patterns):
            prefix = getattr(storage, "prefix", None)
            name = os.path.join(prefix, path) if prefix else path
            if name not in found:
                facts = os.stat(storage.path(path))
                found[name] = StaticSource(name, facts.st_size, facts.st_mtime_ns)
    return [found[name] for name in sorted(found)]


def static_fingerprint(*, sources: Sequence[StaticSource], ignore_patterns: Sequence[str]) -> str:
    """A digest of what ``collectstatic`` would collect from ``sources``, and how."""
    digest = hashlib.sha256()
    for fact in (
        repr(settings.STORAGES.get("staticfiles")),
        repr(getattr(settings, "WHITENOISE_SKIP_COMPRESS_EXTENSIONS", None)),
        repr(sorted(ignore_patterns)),
        f"django=={django.__version__}",
        f"whitenoise=={importlib.metadata.version('whitenoise')}",
    ):
        digest.update(fact.encode() + b"\n")
    for source in sources:
        digest.update(f"{source.name}\0{source.size}\0{source.mtime_ns}\n".encode())
    return digest.hexdigest()


def _targets_not_whole(root: Path, sources: Sequence[StaticSource]) -> list[Path]:
    """The files of STATIC_ROOT that are missing or not of their source's size (a stat
    each). Assumes a storage that keeps each file under its own name, unchanged (WhiteNoise's
    CompressedStaticFilesStorage, the product's); with one that rewrites them every start
    collects, which is slow but right."""
    broken = []
    for source in sources:
        target = root / source.name
        try:
            if target.stat().st_size == source.size:
                continue
        except FileNotFoundError:
            pass
        broken.append(target)
    return broken


def _lock_take(lock: IO[str], *, root: Path, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise CommandError(
                    f"Another RelayPACS start has been collecting the static files into "
                    f"{root} for more than {wait_seconds:.0f} seconds. Check that it is not "
                    "stuck (stop it if it is), then start this one again."
                ) from None
            time.sleep(LOCK_POLL_SECONDS)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def static_collect_if_changed(
    *, ignore_patterns: Sequence[str], lock_wait_seconds: float = LOCK_WAIT_SECONDS
) -> bool:
    """Collect the static files into STATIC_ROOT unless the collection there is current and
    whole; whether it collected.

    Takes STATIC_ROOT's collect lock (waiting at most ``lock_wait_seconds`` for another
    collector, then CommandError); idempotent: a second call with nothing changed only
    stats the files. A collection interrupted at any point is made again by the next call.
    """
    root = Path(settings.STATIC_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / FINGERPRINT_FILE
    with open(root / LOCK_FILE, "a") as lock:
        _lock_take(lock, root=root, wait_seconds=lock_wait_seconds)
        sources = static_sources(ignore_patterns=ignore_patterns)
        fingerprint = static_fingerprint(sources=sources, ignore_patterns=ignore_patterns)
        not_whole = _targets_not_whole(root, sources)
        try:
            if marker.read_text().strip() == fingerprint and not not_whole:
                return False
        except FileNotFoundError:
            pass
        # Gone, durably, before anything is copied: a collection cut short (a kill, a power
        # cut) must not be taken for a whole one.
        marker.unlink(missing_ok=True)
        _fsync_directory(root)
        # A file cut short is newer than its source, and collectstatic would keep it.
        for target in not_whole:
            target.unlink(missing_ok=True)
        call_command(
            "collectstatic", interactive=False, verbosity=0, ignore_patterns=list(ignore_patterns)
        )
        partial = root / f"{FINGERPRINT_FILE}.tmp"
        with open(partial, "w") as out:
            out.write(fingerprint + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, marker)
        _fsync_directory(root)
        return True
