"""The SECRET_KEY of the embedded default, made once into DATA_DIR and kept there.

Processes that start together on an empty DATA_DIR (serve, the worker, beat) must agree on
one key and never read a half-written file, and a power cut must not leave an empty one
(relaypacs.keyfiles).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from relaypacs.keyfiles import private_file_make_once


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
    try:
        private_file_make_once(key_file, secrets.token_urlsafe(50).encode())
    except OSError as error:
        raise ImproperlyConfigured(
            f"Could not write the secret key into {key_file.parent} ({error.strerror}). "
            "Make DATA_DIR writable, or set SECRET_KEY or SECRET_KEY_FILE."
        ) from error
