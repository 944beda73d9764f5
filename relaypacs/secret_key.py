"""The SECRET_KEY of the embedded default, made once into DATA_DIR and kept there.

Processes that start together on an empty DATA_DIR (serve, the worker, beat) must agree on
one key and never read a half-written file, and a power cut must not leave an empty one:
the key is written whole and flushed under a private name, then linked into place (the
first link wins; the others read it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured


def secret_key_kept_in(key_file: Path) -> str:
    """The key in ``key_file``, made first when there is none. Raises ImproperlyConfigured,
    naming the file and the way out, when it cannot be written or is empty."""
    if not key_file.exists():
        _secret_key_make(key_file)
    key = key_file.read_text().strip()
    if not key:
        raise ImproperlyConfigured(
            f"The secret key file {key_file} is empty (a start was cut off while writing it). "
            "Delete it and start again: a new key is made, and sign-ins and upload tokens "
            "made with the old one end."
        )
    return key


def _secret_key_make(key_file: Path) -> None:
    draft = key_file.with_name(f"{key_file.name}.{os.getpid()}.{secrets.token_hex(4)}")
    made = False
    try:
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        made = True
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), 0o600)  # whatever the umask
            out.write(secrets.token_urlsafe(50))
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(draft, key_file)
        except FileExistsError:
            return  # another process made it first: theirs is the key
        with contextlib.suppress(OSError):  # the key is in place; some file systems
            directory = os.open(key_file.parent, os.O_RDONLY)  # cannot flush a directory
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
    except OSError as error:
        raise ImproperlyConfigured(
            f"Could not write the secret key into {key_file.parent} ({error.strerror}). "
            "Make DATA_DIR writable, or set SECRET_KEY or SECRET_KEY_FILE."
        ) from error
    finally:
        if made:
            draft.unlink(missing_ok=True)
