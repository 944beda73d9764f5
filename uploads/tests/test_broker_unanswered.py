"""A Redis that stops answering without closing its connections (a host gone, a network
dropping packets) holds nothing for good: every Redis client of the product waits at most
REDIS_SOCKET_TIMEOUT_SECONDS for each answer, and the places a web request reaches Redis
through give up, log it and go on.

The Redis here is a real TCP listener that takes connections and never answers, the way a
blackholed Redis looks to its client. The calls run in a process of their own with the
product's settings (dev, as `make run`) and both REDIS_URL and CELERY_BROKER_URL pointed at
it, as the compose stack points both at one Redis:

- ``prehash_request``: a chunk that crosses a multiple of 64 MiB asks for hashing ahead;
- ``dispatch_on_commit``: an upload's ``complete`` (and confirm, retry) queues processing;
- ``wake_user``: every domain event wakes the user's live streams (channels-redis);
- the cache (rate-limit counters, audit de-duplication), read on requests;
- a signed report's PDF render, queued when the signature commits.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from django.conf import settings

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]

# The smallest timeout the settings accept, to keep the test short.
TIMEOUT = 2.0

CALLS = """
import time, uuid, django
django.setup()
from django.core.cache import cache
from django.db import transaction
from notifications.wakeup import wake_user
from reports.services.transitions import _render_after_commit
from uploads.services.dispatch import PROCESS_TASK, dispatch_on_commit
from uploads.services.prehash import prehash_request


def timed(name, call):
    began = time.monotonic()
    try:
        call()
        outcome = "returned"
    except Exception as exc:
        outcome = type(exc).__name__
    print(name, round(time.monotonic() - began, 1), outcome, flush=True)


def committed(work):
    def run():
        with transaction.atomic():
            work()
    return run


timed("prehash_request", lambda: prehash_request(upload_id=uuid.uuid4()))
timed("prehash_request_again", lambda: prehash_request(upload_id=uuid.uuid4()))
timed("dispatch_on_commit", committed(
    lambda: dispatch_on_commit(task_name=PROCESS_TASK, upload_id=uuid.uuid4())
))
timed("wake_user", lambda: wake_user(user_id=1))
timed("cache", lambda: cache.get("relaypacs-test-key"))
timed("report_pdf_render", committed(lambda: _render_after_commit(1)))
"""


@pytest.fixture
def silent_redis() -> Iterator[int]:
    """The port of a listener that accepts connections and never answers on them (the
    proxy below, silent from the start: it never connects to the real Redis)."""
    silent = threading.Event()
    silent.set()
    with redis_proxy(silent=silent) as (port, _, held):
        yield port
    assert held, "the calls never reached the silent Redis"


def start_calls(
    *,
    port: int,
    timeout_seconds: float,
    data_dir: Path,
    script: str | None = None,
    db: int = 0,
    queue: str | None = None,
    stderr: Any = subprocess.PIPE,
) -> subprocess.Popen[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="relaypacs.settings.dev",
        PYTHONPATH=str(ROOT),
        DATA_DIR=str(data_dir),
        REDIS_URL=f"redis://127.0.0.1:{port}/{db}",
        CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/{db}",
        REDIS_SOCKET_TIMEOUT_SECONDS=str(timeout_seconds),
    )
    if queue:
        env["CELERY_QUEUE"] = queue
    return subprocess.Popen(
        [sys.executable, "-c", script or CALLS],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )


def test_calls_to_a_redis_that_never_answers_give_up_and_are_logged(
    silent_redis: int, tmp_path: Path
) -> None:
    began = time.monotonic()
    calls = start_calls(port=silent_redis, timeout_seconds=TIMEOUT, data_dir=tmp_path)
    try:
        out, err = calls.communicate(timeout=180)
    finally:
        calls.kill()
    took = time.monotonic() - began
    assert calls.returncode == 0, err[-3000:]
    results = {
        name: (float(seconds), outcome)
        for name, seconds, outcome in map(str.split, out.splitlines())
    }
    assert set(results) == {
        "prehash_request",
        "prehash_request_again",
        "dispatch_on_commit",
        "wake_user",
        "cache",
        "report_pdf_render",
    }, out
    # The request paths go on: only the cache read raises (its callers see Redis fail, as
    # when Redis refuses connections); the sends and the wake-up are caught and logged.
    assert {name: outcome for name, (_, outcome) in results.items()} == {
        "prehash_request": "returned",
        "prehash_request_again": "returned",
        "dispatch_on_commit": "returned",
        "wake_user": "returned",
        "cache": "TimeoutError",
        "report_pdf_render": "returned",
    }
    # Each is bounded by a few waits of TIMEOUT: a client tries again before it gives up
    # (kombu within Celery's 4 s connection timeout, Celery's publish retries, redis-py's
    # own retries). Measured here: 2-7 s each with TIMEOUT = 2.
    for name, (seconds, _) in results.items():
        assert seconds < 6 * TIMEOUT + 4, (name, seconds)
    # After a failed send, the next chunk that asks for hashing ahead does not wait again:
    # the process's sends pause (SEND_PAUSE_SECONDS), and processing hashes the files.
    assert results["prehash_request_again"][0] < 0.5, results
    assert took < 120
    # Every failure is logged, with the way the work is still done; no upload data.
    assert "could not queue hashing ahead for upload" in err
    assert "beat will retry" in err
    assert "notification wake-up not sent: TimeoutError" in err
    assert "Error calling" in err  # Django logs a robust on_commit that raised


def test_without_the_timeout_the_call_would_wait_on(silent_redis: int, tmp_path: Path) -> None:
    """What the setting is for: with a timeout longer than the test waits, the first call
    is still waiting on the silent Redis (so the bounds above are the setting's doing)."""
    calls = start_calls(port=silent_redis, timeout_seconds=600, data_dir=tmp_path)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            calls.communicate(timeout=12)
    finally:
        calls.kill()
        calls.communicate()


def test_a_timeout_too_small_for_redis_s_blocking_reads_is_refused(tmp_path: Path) -> None:
    calls = start_calls(port=1, timeout_seconds=1, data_dir=tmp_path)
    _, err = calls.communicate(timeout=60)
    assert calls.returncode != 0
    assert "REDIS_SOCKET_TIMEOUT_SECONDS is too small" in err


REFUSED = """
import time, uuid, django
django.setup()
from uploads.services.prehash import prehash_request
for name in ("prehash_request", "prehash_request_again"):
    began = time.monotonic()
    prehash_request(upload_id=uuid.uuid4())
    print(name, round(time.monotonic() - began, 1), flush=True)
"""

IN_USE = """
import sys, time, uuid, django
django.setup()
from django.db import transaction
from uploads.services.dispatch import PROCESS_TASK, dispatch_on_commit
from uploads.services.prehash import prehash_request


def timed(name, call):
    began = time.monotonic()
    call()
    print(name, round(time.monotonic() - began, 1), flush=True)


def dispatch():
    with transaction.atomic():
        dispatch_on_commit(task_name=PROCESS_TASK, upload_id=uuid.uuid4())


timed("live_prehash_request", lambda: prehash_request(upload_id=uuid.uuid4()))
timed("live_dispatch_on_commit", dispatch)
print("connected", flush=True)
sys.stdin.readline()  # the test makes Redis go silent
timed("dispatch_on_commit", dispatch)
timed("prehash_request", lambda: prehash_request(upload_id=uuid.uuid4()))
"""


@contextlib.contextmanager
def redis_proxy(*, silent: threading.Event) -> Iterator[tuple[int, int, list[socket.socket]]]:
    """A TCP proxy to the test run's real Redis: (its port, the Redis database, the sockets
    it holds). Once ``silent`` is set, it keeps every connection open and forwards nothing
    more either way (and connects new ones nowhere), as a Redis host that vanished looks
    to its clients."""
    upstream = urlsplit(settings.CELERY_BROKER_URL)
    db = int((upstream.path or "/0").strip("/") or 0)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()
    pumps: list[threading.Thread] = []

    def pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if not silent.is_set():
                    target.sendall(data)
        except OSError:
            return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)
            if silent.is_set():
                continue
            try:
                up = socket.create_connection(
                    (upstream.hostname or "127.0.0.1", upstream.port or 6379), timeout=5
                )
            except OSError:
                conn.close()  # the client sees Redis down; the test's asserts say so
                continue
            up.settimeout(None)
            held.append(up)
            for pair in ((conn, up), (up, conn)):
                pumps.append(threading.Thread(target=pump, args=pair, daemon=True))
                pumps[-1].start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], db, held
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv
            conn.close()
        for pumping in pumps:
            pumping.join(timeout=5)
        listener.close()


@pytest.fixture
def redis_that_goes_silent() -> Iterator[tuple[int, int, threading.Event]]:
    """The proxy, forwarding until the test sets the event it yields."""
    silent = threading.Event()
    with redis_proxy(silent=silent) as (port, db, _):
        yield port, db, silent


def test_connections_in_use_when_redis_goes_silent_give_up_too(
    redis_that_goes_silent: tuple[int, int, threading.Event], tmp_path: Path
) -> None:
    """The other case: the pooled connections worked, then the Redis host went silent.
    ``complete``'s send retries once (not Celery's default three, which waited 5 times
    the timeout here: 10.6 s with 2 s); hashing ahead does not retry."""
    port, db, silent = redis_that_goes_silent
    queue = f"relaypacs-test-silent-{uuid.uuid4().hex}"  # a queue no worker takes
    stderr_path = tmp_path / "stderr.txt"
    timings: dict[str, float] = {}
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    with stderr_path.open("w") as stderr:
        calls = start_calls(
            port=port,
            timeout_seconds=TIMEOUT,
            data_dir=tmp_path / "data",
            script=IN_USE,
            db=db,
            queue=queue,
            stderr=stderr,
        )
        deadline = threading.Timer(120, calls.kill)  # a hung child ends the loop below
        deadline.start()
        try:
            assert calls.stdout is not None and calls.stdin is not None
            for line in calls.stdout:
                if line.startswith("connected"):
                    silent.set()
                    calls.stdin.write("go\n")
                    calls.stdin.flush()
                    continue
                name, seconds = line.split()
                timings[name] = float(seconds)
            calls.wait(timeout=10)
            # Both sends made through the live proxy reached the real Redis; neither made
            # once it was silent did.
            queued = client.llen(queue)
        finally:
            deadline.cancel()
            calls.kill()
            client.delete(*client.keys(f"*{queue}*") or [queue])
            client.close()
    err = stderr_path.read_text()
    assert calls.returncode == 0, err[-3000:]
    assert set(timings) == {
        "live_prehash_request",
        "live_dispatch_on_commit",
        "dispatch_on_commit",
        "prehash_request",
    }, timings
    assert queued == 2
    # Silent, in this order: complete's send, 3 waits of TIMEOUT (one retry, each attempt
    # waits on reconnecting; measured 6.0 s), then hashing ahead, which does not retry
    # (measured 4.0 s: its reconnection, after the failure before, waits twice).
    assert timings["dispatch_on_commit"] < 3 * TIMEOUT + 3, timings
    assert timings["prehash_request"] < 2 * TIMEOUT + 2, timings
    assert err.count("beat will retry") == 1
    assert err.count("could not queue hashing ahead for upload") == 1


def test_a_redis_that_refuses_connections_pauses_hashing_ahead_too(tmp_path: Path) -> None:
    """Redis down (connections refused) costs a send a wait as well (kombu tries to connect
    again within Celery's 4 s connection timeout): after the first, the process's sends
    of hashing ahead pause, so the chunk threads do not each pay it."""
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    calls = start_calls(port=port, timeout_seconds=TIMEOUT, data_dir=tmp_path, script=REFUSED)
    try:
        out, err = calls.communicate(timeout=120)
    finally:
        calls.kill()
    assert calls.returncode == 0, err[-3000:]
    first, again = (float(line.split()[1]) for line in out.splitlines())
    assert first >= 1, out  # it waited (measured 6.2 s), so it paused the sends
    assert again < 0.5, out
    assert err.count("could not queue hashing ahead for upload") == 1
    assert "none is queued from this process for 30 s" in err
