"""The stream under awkward timing, made deterministic: a resume that arrives while a
database read is in flight (the stream's threads held busy), a stream whose database
connection dies mid-read (a real PostgreSQL backend terminated while it waits for a table
lock), and a stream that must not keep its session from idling out."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connection
from django.test import AsyncClient
from django.utils import timezone

from accounts.models import AuthSession
from notifications import live, services

from .test_streams import TIMEOUT, SseReader, _bearer, _next, _ws

pytestmark = pytest.mark.django_db(transaction=True)


def _hold(started: threading.Event, release: threading.Event) -> None:
    started.set()
    release.wait(TIMEOUT)


@contextmanager
def stream_threads_busy() -> Iterator[threading.Event]:
    """Every thread of the streams' pool busy until the yielded event is set: a stream's
    next database read waits (is in flight) until then."""
    release = threading.Event()
    started = [threading.Event() for _ in range(live.STREAM_DB_THREADS)]
    held: list[Future[None]] = [live._executor.submit(_hold, s, release) for s in started]
    try:
        for event in started:
            assert event.wait(TIMEOUT)
        yield release
    finally:
        release.set()
        for future in held:
            future.result(TIMEOUT)


def _stream(signed_in: Any) -> live.Stream:
    return live.Stream(
        auth=live.StreamAuth(
            user_id=signed_in.user.pk,
            session_id=str(signed_in.session.id),
            expires_at=timezone.now() + timedelta(minutes=5),
        )
    )


async def _append_all(user_id: int, count: int) -> None:
    for _ in range(count):
        await sync_to_async(services.event_append)(user_id=user_id, type="upload.started")


async def _take(messages: Any, count: int) -> list[dict[str, Any]]:
    """The next ``count`` messages other than heartbeats, within TIMEOUT altogether."""

    async def take() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < count:
            message = await messages.__anext__()
            if message["type"] != "heartbeat":
                out.append(message)
        return out

    return await asyncio.wait_for(take(), TIMEOUT)


def test_a_resume_during_the_first_read_is_kept(signed_in, fast_stream):
    """The client's resume comes after the grace period, while the stream reads the
    newest number: it must get the events after its own ``after``, not start from now."""

    async def scenario() -> None:
        await _append_all(signed_in.user.pk, 4)
        stream = _stream(signed_in)
        messages = stream.messages(after=None)
        with stream_threads_busy() as release:
            first = asyncio.ensure_future(messages.__anext__())
            await asyncio.sleep(0)  # the stream's read now waits for a thread
            assert not first.done()
            stream.resume(1)
            release.set()
            assert await asyncio.wait_for(first, TIMEOUT) == {"type": "ready", "id": 1}
        assert [m["id"] for m in await _take(messages, 3)] == [2, 3, 4]
        await messages.aclose()

    asyncio.run(scenario())


def test_a_resume_during_a_batch_read_wins_over_the_batch(signed_in, fast_stream):
    async def scenario() -> None:
        await _append_all(signed_in.user.pk, 4)
        stream = _stream(signed_in)
        messages = stream.messages(after=0)
        assert await _take(messages, 1) == [{"type": "ready", "id": 0}]
        with stream_threads_busy() as release:
            following = asyncio.ensure_future(messages.__anext__())
            await asyncio.sleep(0)  # the batch after 0 is being read
            assert not following.done()
            stream.resume(2)
            release.set()
            assert await asyncio.wait_for(following, TIMEOUT) == {"type": "ready", "id": 2}
        assert [m["id"] for m in await _take(messages, 2)] == [3, 4]
        await messages.aclose()

    asyncio.run(scenario())


def test_a_resume_during_a_send_restarts_from_its_after(signed_in, fast_stream):
    async def scenario() -> None:
        await _append_all(signed_in.user.pk, 4)
        stream = _stream(signed_in)
        messages = stream.messages(after=0)
        assert [m.get("id") for m in await _take(messages, 2)] == [0, 1]
        stream.resume(0)  # while event 1 is being sent: the rest of its batch is dropped
        got = await _take(messages, 5)
        assert [(m["type"], m["id"]) for m in got] == [("ready", 0)] + [
            ("upload.started", n) for n in (1, 2, 3, 4)
        ]
        await messages.aclose()

    asyncio.run(scenario())


def _backends_waiting_for_a_lock() -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL backends")
def test_a_stream_whose_database_connection_dies_is_closed_with_1011(signed_in, fast_stream):
    """Before: the pump task died silently and the socket stayed open without heartbeats."""
    locker = connection.get_new_connection(connection.get_connection_params())

    def lock_counters() -> None:
        with locker.cursor() as cursor:  # in a transaction until the rollback below
            cursor.execute("LOCK TABLE notifications_eventcounter IN ACCESS EXCLUSIVE MODE")

    killed: list[int] = []
    stop = threading.Event()

    def kill_the_waiting_reads() -> None:
        """Kill every read that waits for the lock (the stream's own, and the hub's check
        when it comes: they take turns on the stream threads) until the stream says it
        failed; waiting for both to wait at once was seen to take over 30 s on a loaded
        CI machine."""
        killer = connection.get_new_connection(connection.get_connection_params())
        killer.autocommit = True
        try:
            with killer.cursor() as cursor:
                while not stop.is_set():
                    cursor.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                    )
                    for (pid,) in cursor.fetchall():
                        cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
                        killed.append(pid)
                    time.sleep(0.02)
        finally:
            killer.close()

    async def scenario() -> None:
        ws = _ws(_bearer(signed_in.access))
        await ws.connect(timeout=TIMEOUT)
        await ws.send_json_to({"type": "resume", "after": None})
        assert await _next(ws) == {"type": "ready", "id": 0}
        await sync_to_async(lock_counters)()
        killing = threading.Thread(target=kill_the_waiting_reads)
        killing.start()
        try:
            # A stream reads when woken or resumed (a heartbeat reads nothing): resume it,
            # in case the hub's first check has not woken it into a read already.
            await ws.send_json_to({"type": "resume", "after": 0})
            failed = await _next(ws, skip=("heartbeat", "ready"))
        finally:
            stop.set()
            await sync_to_async(killing.join)()
            await sync_to_async(locker.rollback)()
        assert killed, "no read of the stream waited for the counters"
        assert failed["type"] == "error" and failed["error"]["code"] == "stream_failed"
        assert await ws.receive_output(timeout=TIMEOUT) == {
            "type": "websocket.close",
            "code": 1011,
        }
        # The broken connection was not kept: a new stream of the same process works.
        again = _ws(_bearer(signed_in.access))
        await again.connect(timeout=TIMEOUT)
        await again.send_json_to({"type": "resume", "after": None})
        assert await _next(again) == {"type": "ready", "id": 0}
        await again.disconnect()

    try:
        asyncio.run(scenario())
    finally:
        locker.close()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL backends")
def test_an_sse_stream_whose_database_connection_dies_says_so_and_ends(signed_in, fast_stream):
    locker = connection.get_new_connection(connection.get_connection_params())

    def lock_counters() -> None:
        with locker.cursor() as cursor:  # in a transaction until the rollback below
            cursor.execute("LOCK TABLE notifications_eventcounter IN ACCESS EXCLUSIVE MODE")

    def kill_the_waiting_reads() -> None:
        deadline = time.monotonic() + 3 * TIMEOUT  # seen over 10 s on a loaded CI machine
        while len(waiting := _backends_waiting_for_a_lock()) < live.STREAM_DB_THREADS:
            assert time.monotonic() < deadline, "the stream never read the counters"
            time.sleep(0.02)
        with connection.cursor() as cursor:
            for pid in waiting:
                cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
        locker.rollback()

    async def scenario() -> None:
        response = await AsyncClient().get(
            "/api/v1/notifications/stream", headers={"Authorization": f"Bearer {signed_in.access}"}
        )
        reader = SseReader(response)
        assert await reader.next() == {"type": "ready", "id": 0}
        await sync_to_async(lock_counters)()
        # The response is read on (the stream runs only while it is), meanwhile its
        # read is killed.
        following = asyncio.ensure_future(reader.next())
        await sync_to_async(kill_the_waiting_reads)()
        failed = await following
        assert failed["type"] == "error" and failed["error"]["code"] == "stream_failed"
        with pytest.raises(StopAsyncIteration):
            await reader.next()  # the response ended: EventSource reconnects

    try:
        asyncio.run(scenario())
    finally:
        locker.close()


def test_an_open_stream_does_not_keep_its_session_from_idling_out(signed_in, fast_stream):
    seen = timezone.now() - timedelta(minutes=30)
    AuthSession.objects.filter(pk=signed_in.session.pk).update(last_seen_at=seen)

    async def scenario() -> None:
        ws = _ws(_bearer(signed_in.access))
        await ws.connect(timeout=TIMEOUT)
        await ws.send_json_to({"type": "resume", "after": None})
        assert (await _next(ws))["type"] == "ready"
        # Several session checks (every 0.2 s) while two heartbeats (0.5 s) arrive.
        for _ in range(2):
            assert (await ws.receive_json_from(timeout=TIMEOUT)) == {"type": "heartbeat"}
        await ws.disconnect()

    asyncio.run(scenario())
    session = AuthSession.objects.get(pk=signed_in.session.pk)
    assert session.last_seen_at == seen and session.revoked_at is None


def test_a_stream_ends_when_its_session_idles_out(signed_in, fast_stream, settings):
    settings.AUTH_SESSION_IDLE_TIMEOUT = timedelta(minutes=10)
    AuthSession.objects.filter(pk=signed_in.session.pk).update(
        last_seen_at=timezone.now() - timedelta(minutes=10) + timedelta(seconds=3)
    )

    async def scenario() -> None:
        ws = _ws(_bearer(signed_in.access))
        await ws.connect(timeout=TIMEOUT)
        await ws.send_json_to({"type": "resume", "after": None})
        assert (await _next(ws))["type"] == "ready"
        closed = await asyncio.wait_for(_next(ws), TIMEOUT)  # heartbeats until then
        assert closed == {"type": "closed", "reason": "session_ended"}

    asyncio.run(scenario())
