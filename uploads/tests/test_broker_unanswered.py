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

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

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
    """The port of a listener that accepts connections and never answers on them."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()
    assert held, "the calls never reached the silent Redis"


def start_calls(*, port: int, timeout_seconds: float, data_dir: Path) -> subprocess.Popen[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="relaypacs.settings.dev",
        PYTHONPATH=str(ROOT),
        DATA_DIR=str(data_dir),
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0",
        REDIS_SOCKET_TIMEOUT_SECONDS=str(timeout_seconds),
    )
    return subprocess.Popen(
        [sys.executable, "-c", CALLS],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
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
