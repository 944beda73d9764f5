"""A real S3 protocol server for the tests: moto in server mode, as its own process on a
free port, spoken to only over HTTP like any S3 (its 5 MiB multipart part minimum as is).

Registered for every app's tests through ``uploads/tests/fixtures.py``. Safe under
pytest-xdist: each test process starts its own server on a port the kernel chose, and
its bucket name carries the xdist worker id.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

# moto's server imports every AWS service it mocks: a few seconds here, far more on a
# loaded CI machine.
S3_READY_SECONDS = 60
S3_START_ATTEMPTS = 3
S3_REGION = "us-east-1"
S3_ACCESS_KEY_ID = "relaypacs-test"
S3_SECRET_ACCESS_KEY = "relaypacs-test-secret"  # noqa: S105  (moto accepts any key)


@dataclass
class S3ServerForTests:
    """A running moto server and the bucket made for this test process."""

    process: subprocess.Popen[bytes]
    endpoint_url: str
    bucket: str
    log_path: Path
    buckets: list[str] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment that puts a RelayPACS process in S3 mode on this server."""
        return {
            "UPLOAD_STORAGE": "s3",
            "S3_ENDPOINT_URL": self.endpoint_url,
            "S3_BUCKET": self.bucket,
            "S3_REGION": S3_REGION,
            "S3_ACCESS_KEY_ID": S3_ACCESS_KEY_ID,
            "S3_SECRET_ACCESS_KEY": S3_SECRET_ACCESS_KEY,
            **extra,
        }

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=S3_REGION,
            aws_access_key_id=S3_ACCESS_KEY_ID,
            aws_secret_access_key=S3_SECRET_ACCESS_KEY,
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2")
        return [
            item["Key"]
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        ]

    def multipart_uploads(self, prefix: str = "") -> list[dict[str, Any]]:
        answer = self.client().list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return list(answer.get("Uploads", []))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class S3Outage:
    """A TCP relay in front of the S3 server that can go down and come back, as a storage
    outage does: while down, it closes every connection it holds and every new one at once
    (botocore sees the connection dropped, retries, then gives up). The server behind it
    keeps its objects, so the same upload carries on once the relay is up again."""

    def __init__(self, endpoint_url: str) -> None:
        host, port = endpoint_url.rsplit("//", 1)[1].split(":")
        self._upstream = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._down = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.refused = 0
        self._closed = False
        threading.Thread(target=self._accept, name="s3-outage", daemon=True).start()

    def down(self) -> None:
        self._down.set()
        with self._lock:
            for sock in list(self._open):
                self._close(sock)

    def up(self) -> None:
        self._down.clear()

    def close(self) -> None:
        self._closed = True
        self.down()
        self._listener.close()

    def _close(self, sock: socket.socket) -> None:
        self._open.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down.is_set():
                with self._lock:
                    self.refused += 1
                client.close()
                continue
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._upstream, timeout=10)
        except OSError:
            client.close()
            return
        with self._lock:
            self._open.update((client, upstream))
        pair = {client: upstream, upstream: client}
        try:
            while not self._down.is_set():
                readable, _, _ = select.select(list(pair), [], [], 0.2)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._close(client)
                self._close(upstream)


def start_s3_server(directory: Path) -> S3ServerForTests:
    """Start moto's S3 server on a free port and create a bucket; raise if it never answers."""
    from pacs.tests.orthanc_server import free_tcp_ports

    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    last = ""
    for attempt in range(S3_START_ATTEMPTS):
        (port,) = free_tcp_ports(1)
        log_path = directory / f"moto-{attempt}.log"
        log = open(log_path, "ab")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + S3_READY_SECONDS
        while time.monotonic() < deadline and process.poll() is None:
            try:
                requests.get(f"{endpoint}/moto-api/", timeout=2)
                break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            last = log_path.read_text(errors="replace")[-2000:]
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            continue
        server = S3ServerForTests(
            process=process,
            endpoint_url=endpoint,
            bucket=f"relaypacs-test-{worker}-{uuid.uuid4().hex[:8]}",
            log_path=log_path,
        )
        server.client().create_bucket(Bucket=server.bucket)
        return server
    raise RuntimeError(f"moto's S3 server did not start; its log ends with:\n{last}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3ServerForTests]:
    """A real S3 protocol server (moto, its own process) with an empty bucket."""
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def s3_settings(settings: Any, s3_server: S3ServerForTests) -> S3ServerForTests:
    """This test process in S3 mode on the session's S3 server (local disk otherwise)."""
    for name, value in s3_server.env().items():
        setattr(settings, name, value)
    return s3_server
