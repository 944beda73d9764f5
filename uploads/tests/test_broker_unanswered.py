"""A Redis broker that stops answering without closing the connection (a host gone, a
network dropping packets) does not hold a request that queues work for good: each send
gives up after BROKER_SOCKET_TIMEOUT_SECONDS, is logged, and the request goes on.

The broker here is a real TCP listener that takes connections and never answers, the way
a blackholed Redis looks to its client. The sends run in a process of their own with the
product's settings (dev, as `make run`, with the broker pointed at it), through the two
places a web request queues work: ``dispatch_on_commit`` (an upload's ``complete``) and
``prehash_request`` (a chunk that crosses a multiple of 64 MiB).
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

ROOT = Path(__file__).resolve().parents[2]

SENDS = """
import time, uuid, django
django.setup()
from django.db import transaction
from uploads.services.dispatch import PROCESS_TASK, dispatch_on_commit
from uploads.services.prehash import prehash_request
began = time.monotonic()
prehash_request(upload_id=uuid.uuid4())
print("prehash_request", round(time.monotonic() - began, 1), flush=True)
began = time.monotonic()
with transaction.atomic():
    dispatch_on_commit(task_name=PROCESS_TASK, upload_id=uuid.uuid4())
print("dispatch_on_commit", round(time.monotonic() - began, 1), flush=True)
"""


@pytest.fixture
def silent_broker() -> Iterator[int]:
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
    assert held, "the sends never reached the silent broker"


def start_sends(*, port: int, timeout_seconds: float, data_dir: Path) -> subprocess.Popen[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="relaypacs.settings.dev",
        PYTHONPATH=str(ROOT),
        DATA_DIR=str(data_dir),
        CELERY_BROKER_URL=f"redis://127.0.0.1:{port}/0",
        BROKER_SOCKET_TIMEOUT_SECONDS=str(timeout_seconds),
    )
    return subprocess.Popen(
        [sys.executable, "-c", SENDS],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sends_to_a_broker_that_never_answers_give_up_and_are_logged(
    silent_broker: int, tmp_path: Path
) -> None:
    began = time.monotonic()
    sends = start_sends(port=silent_broker, timeout_seconds=1, data_dir=tmp_path)
    out, err = sends.communicate(timeout=120)
    took = time.monotonic() - began
    assert sends.returncode == 0, err[-3000:]
    timings = dict(line.split() for line in out.splitlines())
    assert set(timings) == {"prehash_request", "dispatch_on_commit"}
    # Each send is bounded: a few timed-out attempts of 1 s (4.1 s and 4.6 s measured: the
    # client tries again before it gives up; dispatch keeps Celery's default retries).
    assert float(timings["prehash_request"]) < 15, timings
    assert float(timings["dispatch_on_commit"]) < 40, timings
    assert took < 60
    # Both failures are logged, with the way the work is still done; no upload data.
    assert "could not queue hashing ahead for upload" in err
    assert "beat will retry" in err
    assert "Timeout" in err


def test_without_the_timeout_the_send_would_wait_on(silent_broker: int, tmp_path: Path) -> None:
    """What the setting is for: with a timeout longer than the test waits, the same send is
    still waiting on the silent broker (so the bound above is the setting's doing)."""
    sends = start_sends(port=silent_broker, timeout_seconds=600, data_dir=tmp_path)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            sends.communicate(timeout=12)
    finally:
        sends.kill()
        sends.communicate()
