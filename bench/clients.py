"""The benchmark's clients: chunk PUTs with several requests in flight, the RelayPACS
upload API, and a direct streaming STOW-RS client.

The same chunk sender serves RelayPACS and nginx, so both see the same client: the
chunks of the concatenated files, read from disk, an MD5 computed per chunk, each PUT on
a keep-alive ``http.client`` connection owned by one of ``in_flight`` threads (or a new
connection per chunk, ``keep_alive=False``).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

# Issue #2: the PWA sends 1 MiB chunks, four at a time.
CHUNK_SIZE = 1024 * 1024
IN_FLIGHT = 4
# One chunk PUT on loopback takes milliseconds; a minute means the server is stuck.
REQUEST_TIMEOUT_SECONDS = 60
# The reader stays this many chunks ahead of the senders: enough to never starve them,
# few enough that the client's own memory stays small.
READ_AHEAD_CHUNKS = 2 * IN_FLIGHT
# RelayPACS's own STOW-RS batch bound (PACS_STOW_BATCH_BYTES) and instance bound
# (pacs.services.STOW_BATCH_MAX_INSTANCES), so the direct client sends the same batches.
STOW_BATCH_BYTES = 50 * 1024 * 1024
STOW_BATCH_MAX_INSTANCES = 500
# Blocks in which the direct STOW client streams files (RelayPACS uses 1 MiB too).
STOW_READ_BLOCK = 1024 * 1024
# A 50 MB STOW batch on loopback takes seconds; the relay's own timeout is 120 s.
STOW_TIMEOUT_SECONDS = 120
# How often the client asks for the upload status while waiting for "completed": fine
# enough for a figure in seconds, light enough not to load the server being measured.
STATUS_POLL_SECONDS = 0.2
# A 2 GB study is forwarded in well under this on this machine.
FORWARD_TIMEOUT_SECONDS = 900


@dataclass(frozen=True)
class Transfer:
    """Bytes moved in ``seconds`` of wall time, in ``requests`` requests."""

    bytes: int
    seconds: float
    requests: int

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e6


def content_md5(data: bytes) -> str:
    """Base64 of the MD5 of ``data``: the Content-MD5 header of a chunk."""
    return base64.b64encode(hashlib.md5(data).digest()).decode()  # the protocol's checksum


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(STOW_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def chunk_count(paths: Sequence[Path], chunk_size: int = CHUNK_SIZE) -> int:
    """How many chunks the concatenation of ``paths`` makes."""
    total = sum(p.stat().st_size for p in paths)
    return -(-total // chunk_size)


def iter_stream_chunks(
    paths: Sequence[Path], chunk_size: int, indexes: range
) -> Iterator[tuple[int, bytes]]:
    """Chunks ``indexes`` of the concatenation of ``paths``, read from disk (Blob.slice).

    Reads only the bytes of those chunks, straight into each chunk's buffer.
    """
    sizes = [p.stat().st_size for p in paths]
    total = sum(sizes)
    for index in indexes:
        start = index * chunk_size
        length = min(chunk_size, total - start)
        if length <= 0:
            return
        buffer = bytearray(length)
        view = memoryview(buffer)
        filled, file_start = 0, 0
        for path, size in zip(paths, sizes, strict=True):
            file_end = file_start + size
            position = start + filled
            if filled < length and file_start <= position < file_end:
                with open(path, "rb") as handle:
                    handle.seek(position - file_start)
                    want = min(length - filled, file_end - position)
                    filled += handle.readinto(view[filled : filled + want])
            file_start = file_end
        if filled != length:
            raise RuntimeError(f"chunk {index}: read {filled} of {length} bytes")
        yield index, bytes(buffer)


class _KeepAliveConnection:
    """One HTTP/1.1 connection, reopened once when the server closed an idle one."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.connection: http.client.HTTPConnection | None = None

    def put(self, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        """PUT ``body``; (status, answer body). Raises when a reopened connection fails too."""
        for attempt in (1, 2):
            if self.connection is None:
                self.connection = http.client.HTTPConnection(
                    self.host, self.port, timeout=REQUEST_TIMEOUT_SECONDS
                )
            try:
                self.connection.request("PUT", path, body=body, headers=dict(headers))
                response = self.connection.getresponse()
                return response.status, response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def put_chunks(
    *,
    paths: Sequence[Path],
    port: int,
    path_for: Callable[[int], str],
    headers: Mapping[str, str],
    ok_statuses: frozenset[int],
    chunk_size: int = CHUNK_SIZE,
    indexes: range | None = None,
    in_flight: int = IN_FLIGHT,
    keep_alive: bool = True,
) -> Transfer:
    """PUT chunks ``indexes`` (default: all) of the concatenated ``paths`` to 127.0.0.1:``port``.

    ``in_flight`` threads each keep one request in flight; each chunk carries its
    Content-MD5. Without ``keep_alive`` every chunk goes on a new connection (as a client
    that sends ``Connection: close``). The time runs from the first read to the last
    answer. Raises RuntimeError on the first answer outside ``ok_statuses``.
    """
    if indexes is None:
        indexes = range(chunk_count(paths, chunk_size))
    work: queue.Queue[tuple[int, bytes]] = queue.Queue(maxsize=READ_AHEAD_CHUNKS)
    reading_done = threading.Event()
    stop = threading.Event()
    errors: list[BaseException] = []
    sent = [0] * in_flight
    counts = [0] * in_flight

    def read() -> None:
        try:
            for item in iter_stream_chunks(paths, chunk_size, indexes):
                while not stop.is_set():
                    try:
                        work.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:
            errors.append(exc)
            stop.set()
        finally:
            reading_done.set()

    def send(slot: int) -> None:
        connection = _KeepAliveConnection("127.0.0.1", port)
        try:
            while not stop.is_set():
                try:
                    index, data = work.get(timeout=0.05)
                except queue.Empty:
                    if reading_done.is_set() and work.empty():
                        return
                    continue
                status, body = connection.put(
                    path_for(index),
                    data,
                    {
                        **headers,
                        "Content-MD5": content_md5(data),
                        "Content-Type": "application/octet-stream",
                        **({} if keep_alive else {"Connection": "close"}),
                    },
                )
                if not keep_alive:
                    connection.close()
                if status not in ok_statuses:
                    raise RuntimeError(f"chunk {index}: HTTP {status}: {body[:300]!r}")
                sent[slot] += len(data)
                counts[slot] += 1
        except BaseException as exc:
            errors.append(exc)
            stop.set()
        finally:
            connection.close()

    threads = [threading.Thread(target=read, name="chunk-reader")]
    threads += [
        threading.Thread(target=send, args=(slot,), name=f"chunk-put-{slot}")
        for slot in range(in_flight)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"chunk upload failed: {errors[0]}") from errors[0]
    return Transfer(bytes=sum(sent), seconds=seconds, requests=sum(counts))


def nginx_put(
    *,
    paths: Sequence[Path],
    port: int,
    run: str,
    chunk_size: int = CHUNK_SIZE,
    indexes: range | None = None,
    in_flight: int = IN_FLIGHT,
    keep_alive: bool = True,
) -> Transfer:
    """Chunks of ``paths`` as WebDAV PUTs to ``/put/<run>/<index>`` (201/204)."""
    return put_chunks(
        paths=paths,
        port=port,
        path_for=lambda index: f"/put/{run}/{index:06d}",
        headers={},
        ok_statuses=frozenset({201, 204}),
        chunk_size=chunk_size,
        indexes=indexes,
        in_flight=in_flight,
        keep_alive=keep_alive,
    )


@dataclass(frozen=True)
class Forwarded:
    """complete -> completed: ``seconds``, between two epoch times taken by the client."""

    seconds: float
    posted_at: float
    completed_at: float


@dataclass
class RelayClient:
    """The RelayPACS upload API, as the PWA uses it."""

    base: str
    port: int
    username: str
    password: str

    def __post_init__(self) -> None:
        self.http = requests.Session()
        response = self.http.post(
            f"{self.base}/api/v1/auth/login",
            json={"username": self.username, "password": self.password},
            timeout=30,
        )
        self._check(response, 200, "login")
        self.access = response.json()["access"]

    @staticmethod
    def _check(response: requests.Response, status: int, what: str) -> None:
        """RuntimeError with the answer when ``response`` is not ``status``."""
        if response.status_code != status:
            raise RuntimeError(f"{what}: HTTP {response.status_code}: {response.text[:500]}")

    def init(
        self, paths: Sequence[Path], *, chunk_size: int = CHUNK_SIZE, sha256: bool = False
    ) -> dict[str, Any]:
        """Open an upload of ``paths``; the answer of ``upload/init``. With ``sha256`` each
        file's SHA-256 goes in the manifest, as the PWA sends it (processing then checks
        every file against it)."""
        manifest = {
            "files": [
                {"name": p.name, "size": p.stat().st_size}
                | ({"sha256": file_sha256(p)} if sha256 else {})
                for p in paths
            ],
            "chunk_size": chunk_size,
        }
        response = self.http.post(
            f"{self.base}/api/v1/upload/init",
            json=manifest,
            headers={"Authorization": f"Bearer {self.access}"},
            timeout=60,
        )
        self._check(response, 201, "upload/init")
        return dict(response.json())

    def send_chunks(
        self,
        upload: Mapping[str, Any],
        paths: Sequence[Path],
        indexes: range | None = None,
        *,
        credential: str = "upload",
        in_flight: int = IN_FLIGHT,
        keep_alive: bool = True,
    ) -> Transfer:
        """Chunks ``indexes`` (default: all) of the upload, ``in_flight`` at a time, sent
        with the upload token (what the PWA sends) or, ``credential="access"``, with the
        owner's access token (what docs/upload-api.md allows other clients)."""
        upload_id = upload["upload_id"]
        indexes = range(upload["total_chunks"]) if indexes is None else indexes
        bearer = {"upload": upload["upload_token"], "access": self.access}[credential]
        transfer = put_chunks(
            paths=paths,
            port=self.port,
            path_for=lambda index: f"/api/v1/upload/{upload_id}/chunk?index={index}",
            headers={"Authorization": f"Bearer {bearer}"},
            ok_statuses=frozenset({200}),
            chunk_size=int(upload["chunk_size"]),
            indexes=indexes,
            in_flight=in_flight,
            keep_alive=keep_alive,
        )
        if transfer.requests != len(indexes):
            raise RuntimeError(f"sent {transfer.requests} of {len(indexes)} chunks")
        return transfer

    def _upload_auth(self, upload: Mapping[str, Any]) -> dict[str, str]:
        return {"Authorization": f"Bearer {upload['upload_token']}"}

    def status(self, upload: Mapping[str, Any]) -> dict[str, Any]:
        """The answer of ``upload/{id}/status``."""
        response = self.http.get(
            f"{self.base}/api/v1/upload/{upload['upload_id']}/status",
            headers=self._upload_auth(upload),
            timeout=30,
        )
        self._check(response, 200, "upload status")
        return dict(response.json())

    def complete_and_wait(self, upload: Mapping[str, Any]) -> Forwarded:
        """POST complete, then poll until ``completed``; the time from complete to completed.

        Raises RuntimeError when the upload fails, needs confirmation or takes longer
        than FORWARD_TIMEOUT_SECONDS.
        """
        posted_at = time.time()
        started = time.perf_counter()
        response = self.http.post(
            f"{self.base}/api/v1/upload/{upload['upload_id']}/complete",
            headers=self._upload_auth(upload),
            timeout=60,
        )
        self._check(response, 202, "upload complete")
        deadline = started + FORWARD_TIMEOUT_SECONDS
        while time.perf_counter() < deadline:
            status = self.status(upload)
            if status["state"] == "completed":
                return Forwarded(time.perf_counter() - started, posted_at, time.time())
            if status["state"] in {"failed", "cancelled", "needs_confirmation"}:
                raise RuntimeError(f"upload ended {status['state']}: {json.dumps(status)[:1000]}")
            time.sleep(STATUS_POLL_SECONDS)
        raise RuntimeError(f"upload not completed within {FORWARD_TIMEOUT_SECONDS}s")

    def cancel(self, upload: Mapping[str, Any]) -> None:
        """Cancel the upload, which deletes its stored bytes (needs the access token)."""
        response = self.http.delete(
            f"{self.base}/api/v1/upload/{upload['upload_id']}",
            headers={"Authorization": f"Bearer {self.access}"},
            timeout=60,
        )
        self._check(response, 204, "upload cancel")


def stow_batches(paths: Sequence[Path]) -> list[list[Path]]:
    """``paths`` in order, grouped as RelayPACS groups instances into STOW-RS batches."""
    batches: list[list[Path]] = []
    current: list[Path] = []
    current_bytes = 0
    for path in paths:
        size = path.stat().st_size
        if current and (
            current_bytes + size > STOW_BATCH_BYTES or len(current) >= STOW_BATCH_MAX_INSTANCES
        ):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(path)
        current_bytes += size
    if current:
        batches.append(current)
    return batches


def _multipart(paths: Sequence[Path], boundary: str) -> Iterator[bytes]:
    """The multipart/related body of ``paths``, streamed from disk block by block."""
    for path in paths:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        with open(path, "rb") as handle:
            while block := handle.read(STOW_READ_BLOCK):
                yield block
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def _stow_batch(session: requests.Session, url: str, batch: list[Path]) -> None:
    """POST one STOW-RS batch; RuntimeError unless every instance is acknowledged."""
    boundary = f"bench-{uuid.uuid4().hex}"
    response = session.post(
        url,
        data=_multipart(batch, boundary),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=STOW_TIMEOUT_SECONDS,
    )
    answer = response.json() if response.content.strip() else {}
    referenced = answer.get("00081199", {}).get("Value", [])
    failed = answer.get("00081198", {}).get("Value", [])
    if response.status_code != 200 or len(referenced) != len(batch) or failed:
        raise RuntimeError(
            f"STOW-RS batch: HTTP {response.status_code}, {len(referenced)} of {len(batch)} stored, {len(failed)} failed"
        )


def stow_direct(
    *, dicomweb_url: str, auth: tuple[str, str], paths: Sequence[Path], in_flight: int = 1
) -> Transfer:
    """STOW-RS ``paths`` straight to a PACS, one streamed (chunked) request per batch.

    With ``in_flight=1`` batches go one after the other, like RelayPACS sends them; more
    keeps that many batches in flight, each thread with its own connection. Raises
    RuntimeError when a batch is not answered 200 with every instance in
    ReferencedSOPSequence.
    """
    url = f"{dicomweb_url.rstrip('/')}/studies"
    batches = stow_batches(paths)
    pending: queue.SimpleQueue[list[Path]] = queue.SimpleQueue()
    for batch in batches:
        pending.put(batch)

    def send() -> None:
        with requests.Session() as session:
            session.auth = auth
            while True:
                try:
                    batch = pending.get_nowait()
                except queue.Empty:
                    return
                _stow_batch(session, url, batch)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        for future in [pool.submit(send) for _ in range(in_flight)]:
            future.result()
    seconds = time.perf_counter() - started
    total = sum(p.stat().st_size for p in paths)
    return Transfer(bytes=total, seconds=seconds, requests=len(batches))
