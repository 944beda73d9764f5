"""Test helpers around the PACS: a counting (and, on demand, holding) proxy in front of an
Orthanc, a second Orthanc, and a Celery worker re-pointed at either.

The proxy is how a test sees what was *sent*: Orthanc keeps one copy per SOP Instance UID
whatever arrives, and its statistics count stored instances, so only a proxy can show a
second send. It parses every STOW-RS request it forwards (multipart/related, one DICOM
part per instance) and records the SOP Instance UID of each part.
"""

from __future__ import annotations

import io
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
from pydicom import dcmread

# Headers that belong to one connection and are not copied through the proxy.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)
# How long a held request waits for release() before the test is considered broken.
HOLD_LIMIT_SECONDS = 60
# How often a held request looks whether its client hung up.
HANGUP_POLL_SECONDS = 0.05


def stow_part_uids(content_type: str, body: bytes) -> list[str]:
    """The SOP Instance UID of each part of a STOW-RS multipart/related body, in order."""
    boundary = next(
        (
            item.split("=", 1)[1].strip().strip('"')
            for item in content_type.split(";")
            if item.strip().startswith("boundary=")
        ),
        None,
    )
    if boundary is None:
        return []
    uids = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        _, _, payload = chunk.partition(b"\r\n\r\n")
        payload = payload.removesuffix(b"\r\n")
        dataset = dcmread(io.BytesIO(payload), stop_before_pixels=True, force=True)
        uids.append(str(dataset.get("SOPInstanceUID", "")))
    return uids


@dataclass(frozen=True)
class ProxiedRequest:
    """One request the proxy received: ``forwarded`` once the PACS answered it (with
    ``status``); a request whose client hung up while it was held is never forwarded."""

    method: str
    path: str
    status: int
    forwarded: bool
    sop_instance_uids: tuple[str, ...]  # STOW-RS parts, in order
    received_at: float  # time.monotonic() when its body had arrived

    @property
    def is_stow(self) -> bool:
        return self.method == "POST" and self.path.rstrip("/").endswith("/studies")


class PacsProxy:
    """Forwards every request to ``upstream`` and records it (see ProxiedRequest).

    ``hold_stow(after=n)`` lets n more STOW-RS requests through, then holds each next one
    (its body received, not yet forwarded) until ``release()``: a PACS that is slow to
    answer. ``hold_stow(passing=uids)`` holds every STOW-RS request except those whose
    instances are all in ``uids``: with batches in flight side by side, which one arrives
    first depends on the machine's load, so a test that means "the first batch is
    answered" names that batch's instances. A held request whose client hangs up (a
    killed worker) is dropped, never forwarded, as a PACS never sees a request whose
    sender died before it was delivered.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: list[ProxiedRequest] = []
        self._lock = threading.Condition()
        self._let_through: int | None = None  # None: nothing is held
        self._passing: frozenset[str] = frozenset()  # instances whose requests pass
        self._held = 0
        self._released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    # What was sent -------------------------------------------------------------------

    def stow_requests(self) -> list[ProxiedRequest]:
        with self._lock:
            return [r for r in self.requests if r.is_stow]

    def sent_counts(self) -> Counter[str]:
        """How many times each SOP Instance UID reached the PACS in a STOW-RS request."""
        counts: Counter[str] = Counter()
        for request in self.stow_requests():
            if request.forwarded:
                counts.update(request.sop_instance_uids)
        return counts

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    # Holding -------------------------------------------------------------------------

    def hold_stow(self, *, after: int = 0, passing: Collection[str] = ()) -> None:
        with self._lock:
            self._let_through = after
            self._passing = frozenset(passing)
            self._released.clear()

    def release(self) -> None:
        with self._lock:
            self._let_through = None
            self._passing = frozenset()
            self._released.set()
            self._lock.notify_all()

    @property
    def held(self) -> int:
        with self._lock:
            return self._held

    def wait_until(self, condition: Callable[[PacsProxy], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not condition(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("the PACS proxy did not see what the test waited for")
                self._lock.wait(timeout=min(remaining, 0.1))

    def _should_hold(self, uids: tuple[str, ...]) -> bool:
        with self._lock:
            if self._let_through is None:
                return False
            if uids and self._passing.issuperset(uids):
                return False
            if self._let_through > 0:
                self._let_through -= 1
                return False
            self._held += 1
            self._lock.notify_all()
            return True

    def _wait_released(self, connection: socket.socket) -> bool:
        """Wait for release(); False when the client hung up first."""
        deadline = time.monotonic() + HOLD_LIMIT_SECONDS
        try:
            while not self._released.wait(HANGUP_POLL_SECONDS):
                if time.monotonic() > deadline:
                    return False
                readable, _, _ = select.select([connection], [], [], 0)
                if readable:
                    try:
                        if connection.recv(1, socket.MSG_PEEK) == b"":
                            return False
                    except OSError:
                        return False
            return True
        finally:
            with self._lock:
                self._held -= 1
                self._lock.notify_all()

    def _record(self, request: ProxiedRequest) -> None:
        with self._lock:
            self.requests.append(request)
            self._lock.notify_all()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _proxy(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                received_at = time.monotonic()
                path = self.path.split("?", 1)[0]
                is_stow = self.command == "POST" and path.rstrip("/").endswith("/studies")
                uids = tuple(stow_part_uids(self.headers.get("Content-Type", ""), body))
                if (
                    is_stow
                    and proxy._should_hold(uids)
                    and not proxy._wait_released(self.connection)
                ):
                    proxy._record(ProxiedRequest(self.command, path, 0, False, uids, received_at))
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                try:
                    answer = requests.request(
                        self.command,
                        f"{proxy.upstream}{self.path}",
                        data=body or None,
                        headers=headers,
                        timeout=120,
                    )
                except requests.RequestException:
                    # What a reverse proxy answers when the PACS behind it is down.
                    proxy._record(ProxiedRequest(self.command, path, 502, False, uids, received_at))
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                proxy._record(
                    ProxiedRequest(self.command, path, answer.status_code, True, uids, received_at)
                )
                self.send_response(answer.status_code)
                for name, value in answer.headers.items():
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-encoding":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_DELETE = _proxy  # noqa: N815

        return Handler


@contextmanager
def pacs_proxy(upstream: str) -> Iterator[PacsProxy]:
    proxy = PacsProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()


@contextmanager
def worker_with(worker: Any, **env: str) -> Iterator[Any]:
    """Run the session's Celery worker with ``env`` changed (e.g. its PACS behind a proxy,
    or PACS_MODE), and restart it as it was afterwards."""
    original = dict(worker.env)
    worker.stop()
    worker.env = {**original, **env}
    try:
        worker.start()
        yield worker
    finally:
        worker.stop()
        worker.env = original
        worker.start()


# The proxied worker's PACS timeout outlasts any hold, so that a held request ends only by
# release() or by its sender dying, never by the worker giving up on a slow answer and
# sending it again (how long a test holds depends on how loaded the machine is).
PROXIED_PACS_TIMEOUT_SECONDS = HOLD_LIMIT_SECONDS + 30


def proxied_pacs_env(proxy: PacsProxy) -> dict[str, str]:
    """Worker environment making ``proxy`` its environment-configured PACS."""
    return {
        "PACS_DICOMWEB_URL": proxy.dicomweb_url,
        "PACS_ORTHANC_URL": proxy.url,
        "PACS_TIMEOUT_SECONDS": str(PROXIED_PACS_TIMEOUT_SECONDS),
    }


@contextmanager
def second_orthanc(directory: Path, *, username: str, password: str) -> Iterator[Any]:
    """Another real Orthanc (a second PACS) on free ports, stopped afterwards."""
    from pacs.local_orthanc import LocalOrthanc
    from pacs.tests.orthanc_server import OrthancForTests, free_tcp_ports

    http_port, dicom_port = free_tcp_ports(2)
    helper = OrthancForTests(
        LocalOrthanc(
            data_dir=directory,
            http_port=http_port,
            dicom_port=dicom_port,
            username=username,
            password=password,
            name="SECONDPACS",
        )
    )
    helper.start()
    try:
        yield helper
    finally:
        helper.stop()
