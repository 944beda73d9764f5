"""Shared by the browser tests: the product under test and a link that can be cut.

(A module of its own rather than imports from conftest.py: several conftest modules share
that name in one pytest run.)"""

from __future__ import annotations

import base64
import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message as EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from uploads.tests.product import running_product

REPO = Path(__file__).resolve().parents[2]
USERNAME = "tech"
PASSWORD = "a long technician password"


class Product:
    def __init__(self, base: str, env: dict[str, str], process: subprocess.Popen, log: Path):
        self.base = base
        self.env = env
        self.process = process
        self.log = log

    def manage(self, *args: str, extra_env: dict[str, str] | None = None) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def shell_json(self, code: str) -> Any:
        """Run ``code`` in `manage.py shell`; it prints one JSON line, which is returned."""
        out = self.manage("shell", "--no-imports", "-c", code)
        return json.loads(out.strip().splitlines()[-1])


class CuttableLink:
    """A TCP relay between the browser and the product whose connection can be cut for
    real: open connections are reset and new ones refused, as when a phone loses its signal
    (Chromium's offline emulation only holds requests already in flight). A connection
    that is idle at the cut (both pumps blocked in recv: the live stream's WebSocket between
    heartbeats) is reset only when it next carries data, as close() does not release a
    socket another thread is reading (Linux): like a mobile link, whose idle flows learn of
    the loss only when they next send."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.closed = False
        self.lock = threading.Lock()
        self.open: set[Any] = set()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                self._reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                self._reset(client)
                continue
            with self.lock:
                self.open.update({client, upstream})
            pending = [2]  # pumps still running for this pair
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(src, dst, client, upstream, pending), daemon=True
                ).start()

    def _pump(self, src: Any, dst: Any, client: Any, upstream: Any, pending: list[int]) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)  # pass the end of the stream on politely
        except OSError:
            self._reset(client)
            self._reset(upstream)
            return
        with self.lock:
            pending[0] -= 1
            done = pending[0] == 0
        if done:
            for sock in (client, upstream):
                sock.close()
                with self.lock:
                    self.open.discard(sock)

    def _reset(self, sock: Any) -> None:
        try:
            # SO_LINGER 0: close with a reset, like a dropped link, not a polite FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            sock.close()
        except OSError:
            pass
        with self.lock:
            self.open.discard(sock)

    def cut(self) -> None:
        self.up = False
        with self.lock:
            sockets = list(self.open)
        for sock in sockets:
            self._reset(sock)

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


# The product's Celery worker sends each mail once the request has committed: a second or
# two here, more on a busy CI machine.
MAIL_DEADLINE_SECONDS = 20


class MailSink:
    """A real SMTP server (aiosmtpd) on this machine that keeps what the product sends:
    point the product at it with ``env`` and read the links in the mails."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.handlers import Message

        sink = self

        class Inbox(Message):
            def handle_message(self, message: EmailMessage) -> None:
                with sink.lock:
                    sink.messages.append(message)

        self.lock = threading.Lock()
        self.messages: list[EmailMessage] = []
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.controller = Controller(Inbox(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    @property
    def env(self) -> dict[str, str]:
        return {
            "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "EMAIL_HOST": "127.0.0.1",
            "EMAIL_PORT": str(self.port),
            "EMAIL_USE_TLS": "false",
        }

    def wait_for(self, to: str, subject: str) -> str:
        """The text of the first mail to ``to`` with ``subject``; fails after the deadline."""
        deadline = time.monotonic() + MAIL_DEADLINE_SECONDS
        while time.monotonic() < deadline:
            with self.lock:
                for message in self.messages:
                    if message["To"] == to and message["Subject"] == subject:
                        payload = message.get_payload(decode=True)
                        assert isinstance(payload, bytes), message
                        return payload.decode()
            time.sleep(0.05)
        with self.lock:
            seen = [(m["To"], m["Subject"]) for m in self.messages]
        raise AssertionError(f"no mail {subject!r} to {to}; received {seen}")

    def close(self) -> None:
        self.controller.stop()


def link_in(text: str) -> tuple[str, dict[str, str]]:
    """The path and query values of the first http(s) link in a mail's text."""
    match = re.search(r"https?://\S+", text)
    assert match, text
    url = urlsplit(match.group(0))
    return url.path, {k: v[0] for k, v in parse_qs(url.query).items()}


def totp_code(otpauth_uri: str, steps_ahead: int = 0) -> str:
    """The code an authenticator app shows for ``otpauth_uri``, ``steps_ahead`` time steps
    from now (the server takes each step's code once, so a second sign-in uses the next)."""
    from django_otp.oath import TOTP

    query = {k: v[0] for k, v in parse_qs(urlsplit(otpauth_uri).query).items()}
    secret = query["secret"].upper()
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    step = int(query.get("period", "30"))
    digits = int(query.get("digits", "6"))
    totp = TOTP(key, step=step, digits=digits)
    totp.time = time.time() + steps_ahead * step
    return f"{totp.token():0{digits}d}"


@contextmanager
def product_with_technician(tmp_path: Path, orthanc: Any, **env: str) -> Iterator[Product]:
    """The product as `make run` starts it (with ``env``), and the technician's account."""
    with running_product(tmp_path, orthanc, **env) as running:
        product = Product(running.base, running.env, running.process, running.log)
        product.manage(
            "createsuperuser",
            "--noinput",
            extra_env={
                "DJANGO_SUPERUSER_USERNAME": USERNAME,
                "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
                "DJANGO_SUPERUSER_EMAIL": "tech@example.org",
            },
        )
        yield product


def phone_through(browser: Any, link: CuttableLink) -> Any:
    """A browser context at phone size whose requests go through ``link``."""
    return browser.new_context(
        base_url=link.base,
        viewport={"width": 360, "height": 640},
        device_scale_factor=2,
        is_mobile=True,
    )


def acknowledged_chunks(context: Any, chunk_url: Any) -> list[int]:
    """The indexes of the chunk PUTs the server answered 200, as the browser saw them (the
    page's and the service worker's), appended as they arrive."""
    acked: list[int] = []

    def on_response(response: Any) -> None:
        match = chunk_url.search(response.url)
        if match and response.request.method == "PUT" and response.status == 200:
            acked.append(int(match.group(1)))

    context.on("response", on_response)
    return acked


def slow_link(context: Any, page: Any) -> None:
    """DevTools network conditions of about 4 Mbit/s, 100 ms latency: an upload is under
    way long enough to cut it."""
    cdp = context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 100, "downloadThroughput": 5e5, "uploadThroughput": 5e5},
    )
