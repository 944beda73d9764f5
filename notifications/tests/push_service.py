"""The one stand-in of the Web Push tests: a local HTTP server playing a push service.

It checks each push as a real push service does (RFC 8030/8291/8292): the ``vapid``
Authorization (``t=<JWT>, k=<public key>``), the JWT's ES256 signature with ``k``, that
``k`` is the server's key the browser subscribed with, ``aud`` (this endpoint's origin),
``exp`` (in the future, at most 24 h ahead), ``sub``; ``Content-Encoding: aes128gcm``,
``TTL`` and ``Urgency``. It decrypts the body with the subscription's private key and
auth secret (http_ece) and records the plaintext. It answers 201, or what a test told it
to answer next for an endpoint (410, 404, 429, 500 …; a 3xx carries a Location to
``<endpoint>-redirected``), with an empty body or one of the size a test asked for
(``big_body``: what it managed to send is in ``body_bytes_sent``). Every path POSTed to is
in ``paths``. Checks that fail answer 400/403 and are recorded in ``problems``: a test
asserts there are none.

A subscription is made here as a browser makes one: a P-256 key pair and a 16-byte auth
secret (cryptography); ``subscription(name)`` returns its ``toJSON()``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import http_ece
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

# RFC 8292 §2: a push service refuses a JWT that expires more than 24 hours ahead.
MAX_JWT_LIFETIME_SECONDS = 24 * 3600
URGENCIES = frozenset({"very-low", "low", "normal", "high"})


def _b64d(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Received:
    """One push the service accepted (or refused with a status a test asked for)."""

    name: str
    status: int
    payload: dict[str, Any]
    plaintext: bytes
    headers: dict[str, str]
    claims: dict[str, Any]
    vapid_key: str


@dataclass
class _Device:
    private_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes


@dataclass
class PushService:
    """The server; ``base`` is its origin (``http://127.0.0.1:<port>``)."""

    base: str = ""
    # The server's VAPID public key (GET push-subscriptions' vapid_public_key): pushes
    # signed with another key are refused (403), as a real push service does.
    vapid_public_key: str = ""
    received: list[Received] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _devices: dict[str, _Device] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)
    # Called (in the server's thread) with each push it accepted, before it answers.
    on_push: Callable[[Received], None] | None = None
    body_bytes_sent: dict[str, int] = field(default_factory=dict)
    _answers: dict[str, deque[int]] = field(default_factory=lambda: defaultdict(deque))
    _bodies: dict[str, deque[int]] = field(default_factory=lambda: defaultdict(deque))
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def endpoint(self, name: str) -> str:
        return f"{self.base}/push/{name}"

    def subscription(self, name: str | None = None) -> dict[str, Any]:
        """A new device's ``PushSubscription.toJSON()``, its endpoint on this server."""
        name = name or secrets.token_urlsafe(12)
        device = _Device(ec.generate_private_key(ec.SECP256R1()), os.urandom(16))
        self._devices[name] = device
        point = device.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return {
            "endpoint": self.endpoint(name),
            "expirationTime": None,
            "keys": {"p256dh": _b64e(point), "auth": _b64e(device.auth_secret)},
        }

    def answer(self, name: str, *statuses: int) -> None:
        """The next pushes to ``name`` are answered with ``statuses``, in order; then 201."""
        with self._changed:
            self._answers[name].extend(statuses)

    def big_body(self, name: str, size: int) -> None:
        """The next answer to ``name`` carries a body of ``size`` bytes."""
        with self._changed:
            self._bodies[name].append(size)

    def _body_size(self, name: str) -> int:
        with self._changed:
            queued = self._bodies.get(name)
            return queued.popleft() if queued else 0

    def pushes(self, name: str, *, status: int | None = 201) -> list[Received]:
        with self._changed:
            return [r for r in self.received if r.name == name and status in (None, r.status)]

    def wait_for(
        self, name: str, *, count: int = 1, status: int | None = 201, timeout: float = 60
    ) -> list[Received]:
        """The pushes to ``name`` (answered ``status``) once there are ``count``; fails after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [r for r in self.received if r.name == name and status in (None, r.status)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{len(found)} of {count} pushes to {name} after {timeout} s; "
                        f"problems: {self.problems}"
                    )
                self._changed.wait(left)

    # --- checks -----------------------------------------------------------------------

    def _verify(self, name: str, headers: dict[str, str], body: bytes) -> Received:
        """Raises _Refused(status, why) for what a push service refuses."""
        device = self._devices.get(name)
        if device is None:
            raise _Refused(404, "no such subscription")
        authorization = headers.get("authorization", "")
        scheme, _, params = authorization.partition(" ")
        if scheme.lower() != "vapid":
            raise _Refused(401, f"Authorization scheme {scheme!r}, not vapid")
        parts = dict(
            p.strip().split("=", 1) for p in params.split(",") if "=" in p
        )  # t=<jwt>, k=<key>
        token, key = parts.get("t", ""), parts.get("k", "")
        if not token or not key:
            raise _Refused(401, "vapid Authorization without t= and k=")
        if self.vapid_public_key and key != self.vapid_public_key:
            raise _Refused(403, "k= is not the key the subscription was made with")
        try:
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _b64d(key))
            head_b64, claims_b64, signature_b64 = token.split(".")
            header = json.loads(_b64d(head_b64))
            claims = json.loads(_b64d(claims_b64))
            signature = _b64d(signature_b64)
        except (ValueError, json.JSONDecodeError) as exc:
            raise _Refused(401, f"unreadable JWT or key: {exc}") from exc
        if header.get("alg") != "ES256" or len(signature) != 64:
            raise _Refused(401, f"JWT header {header}, signature of {len(signature)} bytes")
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        try:
            public.verify(
                encode_dss_signature(r, s),
                f"{head_b64}.{claims_b64}".encode(),
                ec.ECDSA(hashes.SHA256()),
            )
        except InvalidSignature as exc:
            raise _Refused(403, "JWT signature does not verify with k=") from exc
        now = time.time()
        if claims.get("aud") != self.base:
            raise _Refused(403, f"aud {claims.get('aud')!r}, not {self.base!r}")
        exp = claims.get("exp")
        if not isinstance(exp, int) or not now < exp <= now + MAX_JWT_LIFETIME_SECONDS:
            raise _Refused(403, f"exp {exp!r} not within 24 h from now ({int(now)})")
        sub = str(claims.get("sub", ""))
        if not sub.startswith(("mailto:", "https:")):
            raise _Refused(403, f"sub {sub!r} is neither mailto: nor https:")
        if headers.get("content-encoding", "").lower() != "aes128gcm":
            raise _Refused(415, f"Content-Encoding {headers.get('content-encoding')!r}")
        if not headers.get("ttl", "").isdigit():
            raise _Refused(400, "no TTL header")
        if headers.get("urgency", "normal") not in URGENCIES:
            raise _Refused(400, f"Urgency {headers.get('urgency')!r}")
        try:
            plaintext = http_ece.decrypt(
                body,
                private_key=device.private_key,
                auth_secret=device.auth_secret,
                version="aes128gcm",
            )
        except Exception as exc:  # noqa: BLE001 - any failure to decrypt is a refusal
            raise _Refused(400, f"payload does not decrypt: {type(exc).__name__}") from exc
        try:
            payload = json.loads(plaintext.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Refused(400, "payload is not UTF-8 JSON") from exc
        return Received(name, 201, payload, plaintext, dict(headers), claims, key)

    def _handle(self, path: str, headers: dict[str, str], body: bytes) -> int:
        name = path.removeprefix("/push/")
        with self._changed:
            self.paths.append(path)
        try:
            received = self._verify(name, headers, body)
        except _Refused as refused:
            with self._changed:
                self.problems.append(f"{name}: {refused.status} {refused.why}")
                self._changed.notify_all()
            return refused.status
        if self.on_push is not None:
            self.on_push(received)
        with self._changed:
            queued = self._answers.get(name)
            received.status = queued.popleft() if queued else 201
            self.received.append(received)
            self._changed.notify_all()
        return received.status


class _Refused(Exception):
    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status
        self.why = why


def _handler_for(service: PushService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status = service._handle(self.path, headers, body)
            name = self.path.removeprefix("/push/")
            size = service._body_size(name)
            self.send_response(status)
            if status == 201:
                self.send_header("Location", f"{service.base}/message/{secrets.token_hex(8)}")
            if 300 <= status < 400:
                self.send_header("Location", f"{service.base}{self.path}-redirected")
            if status == 429:
                self.send_header("Retry-After", "1")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            sent = 0
            chunk = b"x" * 65536
            try:
                while sent < size:
                    self.wfile.write(chunk[: size - sent])
                    sent += min(len(chunk), size - sent)
                self.wfile.flush()
            except OSError:  # the client closed the connection without reading on
                self.close_connection = True
            if size:
                with service._changed:
                    service.body_bytes_sent[name] = sent
                    service._changed.notify_all()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # quiet: the test asserts on what was received

    return Handler


def wait_for_body_sent(service: PushService, name: str, *, timeout: float = 30) -> int:
    """The bytes of the big body sent to ``name`` once the server stopped sending."""
    deadline = time.monotonic() + timeout
    with service._changed:
        while name not in service.body_bytes_sent:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the body to {name} was still being sent after {timeout} s")
            service._changed.wait(left)
        return service.body_bytes_sent[name]


def serve_push_service() -> tuple[PushService, ThreadingHTTPServer]:
    service = PushService()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(service))
    server.daemon_threads = True
    service.base = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True, name="push-service").start()
    return service, server


@pytest.fixture
def push_service(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PushService]:
    """The stand-in push service for this test process: subscriptions to its
    http://127.0.0.1 endpoints allowed (WEB_PUSH_ALLOW_INSECURE_ENDPOINTS), this process's
    VAPID key made in a temporary folder, and the service accepting that key only."""
    from notifications.vapid import vapid_keys

    settings.WEB_PUSH_ALLOW_INSECURE_ENDPOINTS = True
    settings.WEB_PUSH_KEY_DIR = tmp_path_factory.mktemp("vapid")
    keys = vapid_keys()
    assert keys is not None
    service, server = serve_push_service()
    service.vapid_public_key = keys.public_key
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()
