"""Beat exactly once: two `celery beat` processes started as `serve` starts them, on one
PostgreSQL database and one Redis; only the lock holder sends, and the other takes over
when the holder is killed with SIGKILL."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from django.conf import settings

from relaypacs.beat_lock import LOCK_KEY, STANDBY_RETRY_SECONDS
from relaypacs.tests.databases import fresh_database

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# Beat sends uploads-redispatch this often here (REDISPATCH_INTERVAL_SECONDS).
PERIOD = 1
# Long enough to tell one beat (about WINDOW sends) from two (about twice as many).
WINDOW = 10
# Starting a beat imports Django and Celery: a few seconds, far more on a loaded machine.
START_SECONDS = 90
HOLDS = b"took the lock"
STANDBY = b"is on standby"
SENDING = b"Sending due task uploads-redispatch"
LOST = b"lost its lock"


@dataclass
class Beat:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> bytes:
        return self.log.read_bytes()

    def wait_for(self, marker: bytes, timeout: float = START_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in self.text():
                return
            assert self.process.poll() is None, self.text().decode(errors="replace")
            time.sleep(0.2)
        raise AssertionError(f"{self.name} never logged {marker!r}:\n{self.text().decode()}")

    def kill9(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def _beat_env(data_dir: Path, database_url: str, queue: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DJANGO_SETTINGS_MODULE", "REDIS_URL"} and not k.startswith("RELAYPACS_TEST_")
    }
    env.update(
        DATA_DIR=str(data_dir),
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        CELERY_QUEUE=queue,
        REDISPATCH_INTERVAL_SECONDS=str(PERIOD),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def _start_beat(name: str, tmp_path: Path, database_url: str, queue: str, **extra: str) -> Beat:
    """`celery beat` exactly as `manage.py serve` runs it, with a DATA_DIR of its own."""
    data_dir = tmp_path / name
    data_dir.mkdir()
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "relaypacs",
                "beat",
                "--loglevel=INFO",
                f"--schedule={data_dir / 'celerybeat-schedule'}",
                f"--pidfile={data_dir / 'celerybeat.pid'}",
            ],
            cwd=REPO,
            env=_beat_env(data_dir, database_url, queue, **extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Beat(name, process, log)


@pytest.fixture
def shared(django_db_setup: None) -> Iterator[tuple[str, str, redis.Redis]]:
    """A fresh database (no other beat holds its lock) and a private queue on the Redis."""
    queue = f"test-beat-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    with fresh_database("beat") as database_url:
        yield database_url, queue, client
    for key in client.keys(f"*{queue}*"):
        client.delete(key)
    client.close()


def _sent(client: redis.Redis, queue: str, task: str) -> int:
    """How many messages of ``task`` beat put on the queue (nothing consumes it)."""
    count = 0
    for raw in client.lrange(queue, 0, -1):
        message: dict[str, Any] = json.loads(raw)
        if message["headers"]["task"] == task:
            base64.b64decode(message["body"])  # a well-formed task message
            count += 1
    return count


def _sent_during(client: redis.Redis, queue: str, seconds: float) -> int:
    task = "uploads.tasks.uploads_redispatch"
    before = _sent(client, queue, task)
    time.sleep(seconds)
    return _sent(client, queue, task) - before


def test_two_beats_send_each_task_once_per_period_and_the_standby_takes_over(shared, tmp_path):
    database_url, queue, client = shared
    beats: list[Beat] = []
    try:
        first = _start_beat("beat-a", tmp_path, database_url, queue)
        beats.append(first)
        first.wait_for(HOLDS)
        second = _start_beat("beat-b", tmp_path, database_url, queue)
        beats.append(second)
        second.wait_for(STANDBY)

        # Both running: one send per period (two beats would make about twice as many).
        sent = _sent_during(client, queue, WINDOW)
        assert WINDOW / PERIOD / 2 <= sent <= WINDOW / PERIOD + 2, sent
        assert SENDING in first.text()
        assert SENDING not in second.text()
        assert HOLDS not in second.text()

        first.kill9()  # its session ends with its connection: PostgreSQL frees the lock
        killed_at = time.monotonic()
        second.wait_for(HOLDS, timeout=STANDBY_RETRY_SECONDS + 30)
        second.wait_for(SENDING, timeout=30)
        took_over = time.monotonic() - killed_at
        assert took_over < STANDBY_RETRY_SECONDS + 30, took_over

        sent = _sent_during(client, queue, WINDOW)
        assert WINDOW / PERIOD / 2 <= sent <= WINDOW / PERIOD + 2, sent
    finally:
        for beat in beats:
            if beat.process.poll() is None:
                beat.kill9()


def test_a_beat_on_sqlite_takes_no_lock_and_sends_as_before(tmp_path):
    """The embedded default (SQLite, one machine): no lock, beat sends from the start."""
    queue = f"test-beat-{uuid.uuid4().hex}"
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    database_url = f"sqlite:///{tmp_path / 'relaypacs.sqlite3'}"
    beat = _start_beat("beat-sqlite", tmp_path, database_url, queue)
    try:
        beat.wait_for(SENDING)
        assert HOLDS not in beat.text() and STANDBY not in beat.text()
    finally:
        beat.kill9()
        for key in client.keys(f"*{queue}*"):
            client.delete(key)
        client.close()


def test_a_holder_whose_session_ended_stops_sending_and_one_beat_goes_on(shared, tmp_path):
    """The holder's database session ends under it (a restarted PostgreSQL, a lost
    network, idle_session_timeout): it notices at its next check, and exactly one beat
    sends from then on."""
    database_url, queue, client = shared
    beats: list[Beat] = []
    try:
        first = _start_beat("beat-a", tmp_path, database_url, queue)
        beats.append(first)
        first.wait_for(HOLDS)
        second = _start_beat("beat-b", tmp_path, database_url, queue)
        beats.append(second)
        second.wait_for(STANDBY)

        name = database_url.rsplit("/", 1)[1]
        with psycopg.connect(
            database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True
        ) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks JOIN pg_stat_activity USING (pid)"
                " WHERE locktype = 'advisory' AND granted AND datname = %s"
                " AND classid = %s AND objid = %s",
                [name, *LOCK_KEY],
            ).fetchall()
        assert ended == [(True,)]
        first.wait_for(LOST, timeout=30)

        # Whichever took the lock again, one sends: one message per period.
        time.sleep(STANDBY_RETRY_SECONDS + 2)
        sent = _sent_during(client, queue, WINDOW)
        assert WINDOW / PERIOD / 2 <= sent <= WINDOW / PERIOD + 2, sent
        # The first took the lock at start; after its session ended, exactly one took it.
        assert sum(beat.text().count(HOLDS) for beat in beats) == 2
    finally:
        for beat in beats:
            if beat.process.poll() is None:
                beat.kill9()


def test_a_hung_holder_loses_the_lock_and_sends_nothing_when_it_wakes(shared, tmp_path):
    """A holder frozen with SIGSTOP (a stalled VM) keeps its TCP connection but sends no
    query: PostgreSQL ends its session after BEAT_LOCK_IDLE_SECONDS, the standby takes
    over, and the old holder, woken, finds its lock gone before it sends anything."""
    database_url, queue, client = shared
    idle = 10  # the least the lock allows: two holder checks
    beats: list[Beat] = []
    try:
        first = _start_beat(
            "beat-a", tmp_path, database_url, queue, BEAT_LOCK_IDLE_SECONDS=str(idle)
        )
        beats.append(first)
        first.wait_for(HOLDS)
        second = _start_beat(
            "beat-b", tmp_path, database_url, queue, BEAT_LOCK_IDLE_SECONDS=str(idle)
        )
        beats.append(second)
        second.wait_for(STANDBY)

        os.killpg(first.process.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        second.wait_for(HOLDS, timeout=idle + STANDBY_RETRY_SECONDS + 30)
        assert time.monotonic() - stopped_at >= idle - 1  # the server's timeout, not before
        os.killpg(first.process.pid, signal.SIGCONT)
        first.wait_for(LOST, timeout=30)

        sent = _sent_during(client, queue, WINDOW)
        assert WINDOW / PERIOD / 2 <= sent <= WINDOW / PERIOD + 2, sent
        woken = first.text()
        assert SENDING not in woken[woken.index(LOST) :]
        assert woken.count(HOLDS) == 1  # it never took the lock back
    finally:
        for beat in beats:
            if beat.process.poll() is None:
                os.killpg(beat.process.pid, signal.SIGCONT)
                beat.kill9()
