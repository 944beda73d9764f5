"""The VAPID key pair that signs this server's pushes (RFC 8292), and its subject.

From ``VAPID_PRIVATE_KEY`` (or ``VAPID_PRIVATE_KEY_FILE``) when set: a PEM private key
(PKCS#8 or SEC 1), or the base64url raw 32-byte key that ``web-push generate-vapid-keys``
and ``vapid --gen`` print. Otherwise (the embedded default) one is made once into
``WEB_PUSH_KEY_DIR/vapid_private.pem`` (DATA_DIR/push), mode 0600. Every subscription is
bound to the public key the browser was given, so the key must not change: it is written
to a temporary file and hard-linked into place, so two processes starting together (web
and worker) both end up reading the one that won. A folder that cannot be written (a
read-only DATA_DIR) or a file system without hard links turns Web Push off
(VapidKeyInvalid, remembered for the process), never an error of a request.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from dataclasses import dataclass
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings

from relaypacs.keyfiles import private_file_make_once

KEY_FILE_NAME = "vapid_private.pem"
# What push services take as ``sub`` (py_vapid's own check, which refuses anything else):
# a mailto: address or an https origin without a path.
SUBJECT_PATTERN = re.compile(
    r"^(mailto:[^@\s]+@(localhost|[\w%-]+(\.[\w%-]+)+)|https://(localhost|[\w-]+(\.[\w-]+)+)(:\d+)?)$",
    re.IGNORECASE,
)


class VapidKeyInvalid(ValueError):
    """The configured key cannot be read; the message names the variable, never the value."""


@dataclass(frozen=True)
class VapidKeys:
    private_key: ec.EllipticCurvePrivateKey
    # The uncompressed P-256 point, base64url without padding: what the browser's
    # pushManager.subscribe({applicationServerKey}) takes and the `k=` of every push.
    public_key: str
    subject: str


def b64url_decode(value: str) -> bytes:
    """base64url with or without padding; raises ValueError when it is not."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", value):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def public_key_text(key: ec.EllipticCurvePublicKey) -> str:
    return b64url_encode(
        key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )


def private_key_parse(text: str, *, name: str = "VAPID_PRIVATE_KEY") -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from PEM or base64url (raw 32 bytes or DER).

    Raises VapidKeyInvalid with a sentence naming ``name`` (not the value: it is a secret).
    """
    text = text.strip()
    try:
        if "-----BEGIN" in text:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            raw = b64url_decode("".join(text.split()))
            if len(raw) == 32:
                key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
            else:
                key = serialization.load_der_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        raise VapidKeyInvalid(
            f"The environment variable {name} is malformed: it must be a P-256 private key "
            "(PEM, or the base64url key `web-push generate-vapid-keys` prints)."
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise VapidKeyInvalid(
            f"The environment variable {name} is malformed: VAPID needs a P-256 (prime256v1) "
            "elliptic-curve key."
        )
    return key


def subject_default() -> str:
    """PUBLIC_BASE_URL's origin when it is https, else DEFAULT_FROM_EMAIL's address."""
    public = urlsplit(str(getattr(settings, "PUBLIC_BASE_URL", "")))
    if public.scheme == "https" and public.hostname:
        origin = f"https://{public.netloc}"
        if SUBJECT_PATTERN.match(origin):
            return origin
    address = parseaddr(str(getattr(settings, "DEFAULT_FROM_EMAIL", "")))[1]
    return f"mailto:{address or 'relaypacs@localhost'}"


def subject_is_valid(subject: str) -> bool:
    return bool(SUBJECT_PATTERN.match(subject))


def _key_from_data_dir(directory: Path) -> ec.EllipticCurvePrivateKey:
    """Read DATA_DIR's key, making it first if there is none (atomically: see module)."""
    path = directory / KEY_FILE_NAME
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        private_file_make_once(path, pem)
    return private_key_parse(path.read_text(), name=str(path))


def _key_from_data_dir_or_refusal(directory: Path) -> ec.EllipticCurvePrivateKey:
    try:
        return _key_from_data_dir(directory)
    except OSError as exc:
        raise VapidKeyInvalid(
            f"the VAPID key cannot be made or read in {directory} ({exc.strerror or exc}): "
            "give the process a writable folder on a file system with hard links, or set "
            "VAPID_PRIVATE_KEY."
        ) from exc


_cache: dict[tuple[str, str, str, bool], VapidKeys | None | VapidKeyInvalid] = {}
_lock = threading.Lock()


def vapid_keys() -> VapidKeys | None:
    """This server's key pair and subject; None when Web Push is off (``WEB_PUSH_ENABLED``
    false, or production settings without ``VAPID_PRIVATE_KEY``). Read once per process
    (per setting values). Raises VapidKeyInvalid for a key that cannot be read or made (the same one again on
    later calls: not tried again until the settings change or the process restarts)."""
    configured = str(settings.VAPID_PRIVATE_KEY or "")
    directory = str(settings.WEB_PUSH_KEY_DIR)
    from_data_dir = bool(settings.WEB_PUSH_KEYS_FROM_DATA_DIR)
    subject = str(settings.VAPID_SUBJECT or "") or subject_default()
    if not settings.WEB_PUSH_ENABLED:
        return None
    cache_key = (configured, directory, subject, from_data_dir)
    with _lock:
        if cache_key not in _cache:
            try:
                if configured:
                    private = private_key_parse(configured)
                elif from_data_dir:
                    private = _key_from_data_dir_or_refusal(Path(directory))
                else:
                    _cache[cache_key] = None
                    return None
            except VapidKeyInvalid as exc:
                _cache[cache_key] = exc
                raise
            _cache[cache_key] = VapidKeys(
                private_key=private,
                public_key=public_key_text(private.public_key()),
                subject=subject,
            )
        cached = _cache[cache_key]
        if isinstance(cached, VapidKeyInvalid):
            raise cached
        return cached
