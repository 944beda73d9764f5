"""A private file made once, atomically: for the keys the embedded default keeps in DATA_DIR
(relaypacs.secret_key, notifications.vapid)."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def private_file_make_once(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` (mode 0600) unless the file is there already.

    Written whole and flushed under a private name, then hard-linked into place: processes
    that start together never read a half-written file, and a link never replaces, so the
    first one wins and the others (FileExistsError, ignored here) read its file. A power cut
    leaves no empty file. Raises OSError when the file cannot be made.
    """
    draft = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    made = False
    try:
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        made = True
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)  # whatever the umask
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(draft, path)
        except FileExistsError:
            return  # another process made it first: theirs is the file
        with contextlib.suppress(OSError):  # the file is in place; some file systems
            directory = os.open(path.parent, os.O_RDONLY)  # cannot flush a directory
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
    finally:
        if made:  # (unlinking in a read-only folder would hide the first error)
            draft.unlink(missing_ok=True)
