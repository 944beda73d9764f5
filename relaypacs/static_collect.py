"""``collectstatic`` only when the static files changed since the last collection.

Collecting compresses every file (gzip and Brotli, WhiteNoise's storage) and takes about
30 s of CPU on a 2-core machine, at every start of ``manage.py serve``: most starts
collect exactly what is already there. So the sources are fingerprinted first (each file
the finders list, with its size and modification time, and the storage backend that
writes them), and collection is skipped when STATIC_ROOT holds a collection of the same
fingerprint. Several processes starting at once on one STATIC_ROOT (nodes sharing a
volume, or a test session's products) take turns under a file lock: the first collects,
the others find it done.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.management import call_command

# In STATIC_ROOT: the fingerprint of the collection there (written last, once it is whole)
# and the lock collectors take turns under.
FINGERPRINT_FILE = ".relaypacs-collected"
LOCK_FILE = ".relaypacs-collect.lock"


def static_fingerprint(*, ignore_patterns: Sequence[str]) -> str:
    """A digest of what ``collectstatic`` with ``ignore_patterns`` would collect, and how."""
    default_ignored = apps.get_app_config("staticfiles").ignore_patterns  # type: ignore[attr-defined]
    patterns = [*default_ignored, *ignore_patterns]
    digest = hashlib.sha256()
    digest.update(repr(settings.STORAGES.get("staticfiles")).encode())
    digest.update(repr(sorted(patterns)).encode())
    entries: list[str] = []
    for finder in finders.get_finders():
        for path, storage in finder.list(patterns):
            prefix = getattr(storage, "prefix", None) or ""
            facts = os.stat(storage.path(path))
            entries.append(f"{prefix}/{path}\0{facts.st_size}\0{facts.st_mtime_ns}")
    for entry in sorted(entries):
        digest.update(entry.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def static_collect_if_changed(*, ignore_patterns: Sequence[str]) -> bool:
    """Collect the static files into STATIC_ROOT unless the collection there is current;
    whether it collected."""
    root = Path(settings.STATIC_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / FINGERPRINT_FILE
    with open(root / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        fingerprint = static_fingerprint(ignore_patterns=ignore_patterns)
        try:
            if marker.read_text().strip() == fingerprint:
                return False
        except FileNotFoundError:
            pass
        # A collection cut short (a kill mid-way) must not be taken for a whole one.
        marker.unlink(missing_ok=True)
        call_command(
            "collectstatic", interactive=False, verbosity=0, ignore_patterns=list(ignore_patterns)
        )
        partial = root / f"{FINGERPRINT_FILE}.tmp"
        partial.write_text(fingerprint + "\n")
        os.replace(partial, marker)
        return True
