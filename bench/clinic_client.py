"""One clinic's PWA, as a bounded client of threads: sign in, init, status, chunk PUTs
with the upload token (the PWA's default chunk size, its in-flight bound and adaptation,
its retries), telemetry, complete, then status polls until ``completed``.

Every request goes over HTTPS (HTTP/1.1 keep-alive; the browser would speak HTTP/2) from
the clinic's own loopback address, so nginx, the product's throttles and its audit see
50 clinics, not one client. Every answer that is not 2xx, and every connection error, is
counted as an error, also when a retry then succeeds: the goal is none.
"""

from __future__ import annotations

import http.client
import json
import random
import ssl
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.clients import content_md5, iter_stream_chunks

# frontend/src/linkTuning.ts: DEFAULT_CHUNK when nothing is known about the link (a first
# upload), MAX_IN_FLIGHT, and nextInFlight's thresholds (seconds per chunk, per chunk in
# flight: above 1.5 s two in flight, above 20 s one).
CHUNK_SIZE = 1024 * 1024
MAX_IN_FLIGHT = 3
# linkTuning.ts's FIRST_IN_FLIGHT: one chunk first, one more per quick answer.
FIRST_IN_FLIGHT = 1
TWO_IN_FLIGHT_ABOVE_SECONDS = 1.5
ONE_IN_FLIGHT_ABOVE_SECONDS = 20.0
# linkTuning.ts's SERVER_ADVICE_MS: how long a busy server's max_in_flight holds.
SERVER_ADVICE_SECONDS = 10.0
# frontend/src/uploader.ts: a chunk is tried 4 times on a 5xx (not 507) or a damaged body,
# with backoff.ts's delays (1 s base doubling to 30 s, "half jitter"); status polled every
# 1.5 s while the live stream is not connected.
CHUNK_ATTEMPTS = 4
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
POLL_SECONDS = 1.5
# The PWA's fetch has no timeout; a minute without an answer means the server is stuck.
REQUEST_TIMEOUT_SECONDS = 60
# Forwarding 50 studies of 20 MB on two cores ends in a few minutes; far more is a hang.
COMPLETED_TIMEOUT_SECONDS = 900


def backoff_seconds(attempt: int) -> float:
    """backoff.ts's backoffDelay: between half and all of min(30 s, 1 s * 2^attempt)."""
    ceiling = min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, attempt))
    return ceiling / 2 + random.random() * ceiling / 2  # noqa: S311 (jitter, not a secret)


def advice_from(
    max_in_flight: object, previous: tuple[int, float] | None, now: float
) -> tuple[int, float] | None:
    """linkTuning.ts's adviceFrom: the (limit, until) a chunk answer's ``max_in_flight``
    gives, else the one still holding."""
    if (
        isinstance(max_in_flight, int)
        and not isinstance(max_in_flight, bool)
        and max_in_flight >= 1
    ):
        return min(max_in_flight, MAX_IN_FLIGHT), now + SERVER_ADVICE_SECONDS
    return previous if previous is not None and now < previous[1] else None


def advised_in_flight(
    current: int, seconds: float, advice: tuple[int, float] | None, now: float
) -> int:
    """linkTuning.ts's advisedInFlight: next_in_flight within the server's advice."""
    following = next_in_flight(current, seconds)
    if advice is None or now >= advice[1]:
        return following
    return max(1, min(following, advice[0]))


def next_in_flight(current: int, seconds: float) -> int:
    """linkTuning.ts's nextInFlight: one step towards the target after a chunk took ``seconds``."""
    per_chunk = seconds / max(1, current)
    target = MAX_IN_FLIGHT
    if per_chunk > ONE_IN_FLIGHT_ABOVE_SECONDS:
        target = 1
    elif per_chunk > TWO_IN_FLIGHT_ABOVE_SECONDS:
        target = 2
    if target < current:
        return current - 1
    if target > current:
        return current + 1
    return current


@dataclass(frozen=True)
class Endpoint:
    """Where the clinics connect (nginx's HTTPS port) and the certificate to trust."""

    host: str
    port: int
    cafile: Path


@dataclass(frozen=True)
class ChunkTiming:
    """One successful chunk PUT: when it started (monotonic) and how long it took."""

    clinic: int
    index: int
    started: float
    seconds: float
    attempts: int


@dataclass
class ClinicResult:
    """What one clinic saw; times are monotonic seconds."""

    clinic: int
    bytes: int = 0
    chunks: list[ChunkTiming] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    login_seconds: float = 0.0
    upload_started: float = 0.0
    chunks_done: float = 0.0
    completed_at: float = 0.0
    complete_to_completed: float = 0.0
    final_state: str = ""
    failure: str = ""
    max_in_flight_seen: int = 0
    # Chunk answers that carried the server's max_in_flight (a busy node).
    advised_chunks: int = 0
    min_in_flight_seen: int = MAX_IN_FLIGHT


class RequestFailed(Exception):
    """A request that did not get its expected answer after the PWA's retries."""


class _Connection:
    """One keep-alive HTTPS connection from a fixed local address."""

    def __init__(self, endpoint: Endpoint, source: str, context: ssl.SSLContext) -> None:
        self.endpoint = endpoint
        self.source = source
        self.context = context
        self.connection: http.client.HTTPSConnection | None = None

    def request(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> tuple[int, bytes]:
        """(status, body); raises OSError / http.client errors on a broken connection."""
        if self.connection is None:
            self.connection = http.client.HTTPSConnection(
                self.endpoint.host,
                self.endpoint.port,
                timeout=REQUEST_TIMEOUT_SECONDS,
                context=self.context,
                source_address=(self.source, 0),
            )
        try:
            self.connection.request(method, path, body=body, headers=dict(headers))
            response = self.connection.getresponse()
            data = response.read()
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            return response.status, data
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def error_key(status: int, body: bytes) -> str:
    """``"503 service_unavailable"``: the status and the API's error code when there is one."""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = ""
    return f"{status} {code}".strip()


def _kind(path: str) -> str:
    """The endpoint of ``path`` without its ids: ``status``, ``init``, ``login``, ..."""
    return path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


class Clinic:
    """One clinic's user, study and PWA. ``run`` does the whole upload; thread-safe counts."""

    def __init__(
        self,
        *,
        number: int,
        endpoint: Endpoint,
        source: str,
        username: str,
        password: str,
        paths: Sequence[Path],
        link_bytes_per_second: float = 0.0,
        on_chunks_done: Callable[[], None] | None = None,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.number = number
        self.chunk_size = chunk_size
        self.link_bytes_per_second = link_bytes_per_second
        self.on_chunks_done = on_chunks_done
        self.endpoint = endpoint
        self.source = source
        self.username = username
        self.password = password
        self.paths = list(paths)
        self.context = ssl.create_default_context(cafile=str(endpoint.cafile))
        self.result = ClinicResult(clinic=number, bytes=sum(p.stat().st_size for p in paths))
        self.lock = threading.Lock()
        self.control = _Connection(endpoint, source, self.context)
        self.access = ""
        self.upload: dict[str, Any] = {}

    def _count_error(self, key: str) -> None:
        with self.lock:
            self.result.errors[key] += 1

    def _call(
        self,
        method: str,
        path: str,
        *,
        expect: int,
        token: str = "",
        payload: Any = None,
        connection: _Connection | None = None,
    ) -> Any:
        """A JSON request, tried CHUNK_ATTEMPTS times on a 5xx or a broken connection
        (the PWA's run loop backs off and tries again on those); the decoded answer."""
        connection = connection or self.control
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        body = None
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        for attempt in range(CHUNK_ATTEMPTS):
            try:
                status, data = connection.request(method, path, body, headers)
            except (OSError, http.client.HTTPException) as exc:
                self._count_error(f"{method} {_kind(path)}: connection {type(exc).__name__}")
            else:
                if status == expect:
                    return json.loads(data) if data.strip() else None
                self._count_error(f"{method} {_kind(path)}: {error_key(status, data)}")
                if status < 500 or status == 507:
                    raise RequestFailed(f"{method} {path}: HTTP {status}")
            time.sleep(backoff_seconds(attempt))
        raise RequestFailed(f"{method} {path}: no answer after {CHUNK_ATTEMPTS} attempts")

    def sign_in(self) -> None:
        started = time.perf_counter()
        answer = self._call(
            "POST",
            "/api/v1/auth/login",
            expect=200,
            payload={"username": self.username, "password": self.password},
        )
        self.access = answer["access"]
        self.result.login_seconds = time.perf_counter() - started

    def upload_study(self) -> None:
        """init, status, the missing chunks, telemetry, complete, status until completed."""
        result = self.result
        result.upload_started = time.monotonic()
        self.upload = self._call(
            "POST",
            "/api/v1/upload/init",
            expect=201,
            token=self.access,
            payload={
                "files": [{"name": p.name, "size": p.stat().st_size} for p in self.paths],
                "metadata": {},
                "clinical_notes": "",
                "service_level": "routine",
                "allow_partial": False,
                "force_upload": False,
                "chunk_size": self.chunk_size,
            },
        )
        status = self.status()
        if status["state"] != "receiving":
            raise RequestFailed(f"a new upload is {status['state']}, not receiving")
        sending_started = time.monotonic()
        try:
            self._send_chunks(list(status["missing_chunks"]))
        finally:
            result.chunks_done = time.monotonic()
            if self.on_chunks_done:
                self.on_chunks_done()
        upload_id, token = self.upload["upload_id"], self.upload["upload_token"]
        self._call(
            "POST",
            f"/api/v1/upload/{upload_id}/telemetry",
            expect=204,
            token=token,
            payload={
                "bytes_sent": result.bytes,
                "active_seconds": round(result.chunks_done - sending_started, 3),
                "outages": 0,
                "offline_seconds": 0,
                "retried_chunks": sum(c.attempts - 1 for c in result.chunks),
            },
        )
        posted = time.monotonic()
        self._call("POST", f"/api/v1/upload/{upload_id}/complete", expect=202, token=token)
        deadline = posted + COMPLETED_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            status = self.status()
            if status["state"] in {"completed", "failed", "cancelled", "needs_confirmation"}:
                result.final_state = status["state"]
                result.completed_at = time.monotonic()
                result.complete_to_completed = result.completed_at - posted
                if status["state"] != "completed":
                    code = (status.get("error") or {}).get("code", "")
                    raise RequestFailed(f"the upload ended {status['state']} ({code})")
                return
        raise RequestFailed(f"not completed within {COMPLETED_TIMEOUT_SECONDS} s")

    def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = self._call(
            "GET",
            f"/api/v1/upload/{self.upload['upload_id']}/status",
            expect=200,
            token=self.upload["upload_token"],
        )
        return answer

    def _send_chunks(self, indexes: list[int]) -> None:
        """The PWA's sendChunks: up to ``in_flight`` chunks at once (MAX_IN_FLIGHT threads,
        each with its own connection), ``in_flight`` adapted after every chunk.

        With a link rate, chunk ``n`` of the list starts no earlier than ``n`` chunk
        times of the link after a random start within the first chunk time: the link
        delivers a chunk's bytes that often, and the clinics do not start in lock step.
        """
        chunk_size = int(self.upload["chunk_size"])
        interval = chunk_size / self.link_bytes_per_second if self.link_bytes_per_second else 0.0
        origin = time.monotonic() + random.random() * interval  # noqa: S311 (not a secret)
        pending = deque((origin + n * interval, index) for n, index in enumerate(indexes))
        condition = threading.Condition()
        state = {"in_flight": FIRST_IN_FLIGHT, "active": 0}
        advice: list[tuple[int, float] | None] = [None]
        failures: list[BaseException] = []

        def sender() -> None:
            connection = _Connection(self.endpoint, self.source, self.context)
            try:
                while True:
                    with condition:
                        while pending and not failures and state["active"] >= state["in_flight"]:
                            condition.wait()
                        if not pending or failures:
                            return
                        not_before, index = pending.popleft()
                        state["active"] += 1
                        self.result.max_in_flight_seen = max(
                            self.result.max_in_flight_seen, state["active"]
                        )
                    wait = not_before - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    try:
                        seconds, max_in_flight = self._send_chunk(connection, index)
                    except BaseException as exc:
                        with condition:
                            failures.append(exc)
                            state["active"] -= 1
                            condition.notify_all()
                        return
                    with condition:
                        state["active"] -= 1
                        now = time.monotonic()
                        advice[0] = advice_from(max_in_flight, advice[0], now)
                        state["in_flight"] = advised_in_flight(
                            state["in_flight"], seconds, advice[0], now
                        )
                        if max_in_flight is not None:
                            self.result.advised_chunks += 1
                        self.result.min_in_flight_seen = min(
                            self.result.min_in_flight_seen, state["in_flight"]
                        )
                        condition.notify_all()
            finally:
                connection.close()

        threads = [
            threading.Thread(target=sender, name=f"clinic-{self.number}-chunk-{slot}")
            for slot in range(MAX_IN_FLIGHT)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]

    def _send_chunk(self, connection: _Connection, index: int) -> tuple[float, object]:
        """PUT one chunk (read from disk, with its MD5) like uploader.ts's sendChunk; the
        seconds of the attempt that succeeded and its answer's ``max_in_flight``."""
        chunk_size = int(self.upload["chunk_size"])
        ((_, data),) = list(iter_stream_chunks(self.paths, chunk_size, range(index, index + 1)))
        headers = {
            "Authorization": f"Bearer {self.upload['upload_token']}",
            "Content-Type": "application/octet-stream",
            "Content-MD5": content_md5(data),
        }
        path = f"/api/v1/upload/{self.upload['upload_id']}/chunk?index={index}"
        for attempt in range(CHUNK_ATTEMPTS):
            started = time.monotonic()
            try:
                status, body = connection.request("PUT", path, data, headers)
            except (OSError, http.client.HTTPException) as exc:
                self._count_error(f"PUT chunk: connection {type(exc).__name__}")
            else:
                seconds = time.monotonic() - started
                if status == 200:
                    with self.lock:
                        self.result.chunks.append(
                            ChunkTiming(self.number, index, started, seconds, attempt + 1)
                        )
                    return seconds, json.loads(body).get("max_in_flight")
                self._count_error(f"PUT chunk: {error_key(status, body)}")
                retryable = (status >= 500 and status != 507) or b"checksum_mismatch" in body
                if not retryable:
                    raise RequestFailed(f"chunk {index}: HTTP {status}")
            time.sleep(backoff_seconds(attempt))
        raise RequestFailed(f"chunk {index}: no answer after {CHUNK_ATTEMPTS} attempts")
