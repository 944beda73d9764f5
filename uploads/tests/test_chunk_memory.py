"""The chunk memory budget: first come, first served, given back however a request ends;
and, over a real socket to uvicorn, a chunk PUT that waits for it leaves its body unread
and is answered 503 ``server_busy`` when it waits too long."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from accounts.models import Role
from accounts.tests.factories import UserFactory
from accounts.tests.helpers import PASSWORD
from relaypacs.asgi import django_asgi_app
from uploads.chunk_endpoint import ChunkEndpoint
from uploads.chunk_memory import (
    RETRY_AFTER_SECONDS,
    ChunkMemoryBudget,
    ChunkMemoryBusy,
    chunk_memory_budget_from_settings,
)
from uploads.models import UploadChunk
from uploads.tests.helpers import content_md5

MIB = 1024 * 1024


def _waits() -> tuple[float, float]:
    """(count, sum) of relaypacs_chunk_memory_wait_seconds in this process."""
    count = REGISTRY.get_sample_value("relaypacs_chunk_memory_wait_seconds_count") or 0.0
    total = REGISTRY.get_sample_value("relaypacs_chunk_memory_wait_seconds_sum") or 0.0
    return count, total


def _busy_refusals() -> float:
    value = REGISTRY.get_sample_value("relaypacs_chunks_received_total", {"outcome": "busy"})
    return value or 0.0


# --- The budget alone ---------------------------------------------------------------------


async def _wait_until(condition: Any, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0)


def test_requests_are_granted_in_arrival_order_and_a_small_one_never_overtakes():
    async def scenario() -> list[str]:
        budget = ChunkMemoryBudget(10)
        order: list[str] = []
        first_done = asyncio.Event()

        async def hold(name: str, size: int, until: asyncio.Event | None = None) -> None:
            async with budget.reserved(size, timeout=5):
                order.append(name)
                if until is not None:
                    await until.wait()

        first = asyncio.create_task(hold("first 8", 8, first_done))
        await _wait_until(lambda: order == ["first 8"])
        large = asyncio.create_task(hold("then 5", 5))
        await _wait_until(lambda: budget.waiting == 1)
        # 1 byte would fit beside the first, but the 5 came before it: it waits its turn.
        small = asyncio.create_task(hold("then 1", 1))
        await _wait_until(lambda: budget.waiting == 2)
        assert order == ["first 8"] and budget.held == 8
        first_done.set()
        await asyncio.gather(first, large, small)
        assert budget.held == 0 and budget.waiting == 0
        return order

    assert asyncio.run(scenario()) == ["first 8", "then 5", "then 1"]


def test_a_request_cancelled_while_it_waits_takes_nothing_and_lets_the_next_one_in():
    async def scenario() -> None:
        budget = ChunkMemoryBudget(10)
        release = asyncio.Event()
        granted: list[str] = []

        async def hold(name: str, size: int) -> None:
            async with budget.reserved(size, timeout=5):
                granted.append(name)
                await release.wait()

        holder = asyncio.create_task(hold("holder", 6))
        await _wait_until(lambda: budget.held == 6)
        blocked = asyncio.create_task(hold("large", 10))  # needs everything: waits
        await _wait_until(lambda: budget.waiting == 1)
        behind = asyncio.create_task(hold("small", 4))  # fits, but behind the large one
        await _wait_until(lambda: budget.waiting == 2)
        blocked.cancel()  # e.g. the server shutting down
        with pytest.raises(asyncio.CancelledError):
            await blocked
        await _wait_until(lambda: granted == ["holder", "small"])
        assert budget.held == 10 and budget.waiting == 0
        release.set()
        await asyncio.gather(holder, behind)
        assert budget.held == 0

    asyncio.run(scenario())


def test_a_request_granted_in_the_moment_it_is_cancelled_gives_the_bytes_back():
    async def scenario() -> None:
        budget = ChunkMemoryBudget(10)
        holding = asyncio.Event()
        release = asyncio.Event()

        async def holder() -> None:
            async with budget.reserved(10, timeout=5):
                holding.set()
                await release.wait()
            # In the same step as the release that granted the waiter its bytes, before
            # the waiter could run: it is cancelled holding a grant.
            second.cancel()

        async def waiter() -> None:
            async with budget.reserved(10, timeout=5):
                raise AssertionError("a cancelled request never runs its block")

        first = asyncio.create_task(holder())
        await holding.wait()
        second = asyncio.create_task(waiter())
        await _wait_until(lambda: budget.waiting == 1)
        release.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await second
        assert budget.held == 0 and budget.waiting == 0

    asyncio.run(scenario())


def test_the_bytes_go_back_when_the_block_raises_and_a_wait_times_out_with_busy():
    async def scenario() -> None:
        budget = ChunkMemoryBudget(10)
        waits_before = _waits()
        with pytest.raises(RuntimeError):
            async with budget.reserved(7, timeout=1):
                raise RuntimeError("storing failed")
        assert budget.held == 0
        async with budget.reserved(10, timeout=1):
            began = time.monotonic()
            with pytest.raises(ChunkMemoryBusy) as busy:
                async with budget.reserved(1, timeout=0.2):
                    raise AssertionError("never granted")
            assert 0.15 < time.monotonic() - began < 2
            assert busy.value.status_code == 503 and busy.value.code == "server_busy"
            assert budget.waiting == 0
        assert budget.held == 0
        # Only the request that found the budget spent is observed, with its whole wait.
        count, total = _waits()
        assert count - waits_before[0] == 1
        assert 0.15 < total - waits_before[1] < 2

    asyncio.run(scenario())


def test_a_request_larger_than_the_budget_gets_through_alone():
    async def scenario() -> None:
        budget = ChunkMemoryBudget(10)
        async with budget.reserved(25, timeout=1) as held:
            assert held == 10 and budget.held == 10
        async with budget.reserved(3, timeout=1):
            with pytest.raises(ChunkMemoryBusy):
                async with budget.reserved(25, timeout=0.1):
                    pass
        assert budget.held == 0

    asyncio.run(scenario())


def test_a_budget_below_the_largest_chunk_is_raised_to_it(settings, caplog):
    settings.UPLOAD_MAX_CHUNK_SIZE = 16 * MIB
    settings.CHUNK_MEMORY_BUDGET_BYTES = 4 * MIB
    assert chunk_memory_budget_from_settings().capacity == 16 * MIB
    assert "CHUNK_MEMORY_BUDGET_BYTES=4194304 is below the largest chunk" in caplog.text
    settings.CHUNK_MEMORY_BUDGET_BYTES = 64 * MIB
    assert chunk_memory_budget_from_settings().capacity == 64 * MIB


# --- Over real sockets to uvicorn ---------------------------------------------------------

CHUNK = 16 * MIB  # the largest: far more than the socket buffers hold


@contextmanager
def serving(budget: ChunkMemoryBudget) -> Iterator[int]:
    """uvicorn in a thread serving the chunk endpoint (with ``budget``) before Django."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    app = ChunkEndpoint(fallback=django_asgi_app, budget=budget)
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        listener.close()


def _upload(chunks: int) -> tuple[dict[str, Any], str]:
    """A real upload of ``chunks`` 16 MiB chunks; the init answer and an access token."""
    user = UserFactory(role=Role.RADIOGRAPHER)
    client = APIClient()
    access = client.post(
        "/api/v1/auth/login", {"username": user.username, "password": PASSWORD}, format="json"
    ).json()["access"]
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    response = client.post(
        "/api/v1/upload/init",
        {"files": [{"name": "a.dcm", "size": chunks * CHUNK}], "chunk_size": CHUNK},
        format="json",
    )
    assert response.status_code == 201, response.json()
    return response.json(), access


def _start_put(
    port: int, upload: dict[str, Any], index: int, data: bytes, token: str
) -> socket.socket:
    """A chunk PUT's headers on a new connection (the body is the caller's to send)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    # A small send buffer: what the client has sent is what the server's side took.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    conn.sendall(
        (
            f"PUT /api/v1/upload/{upload['upload_id']}/chunk?index={index} HTTP/1.1\r\n"
            "Host: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-MD5: {content_md5(data)}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        ).encode()
    )
    return conn


def _send_until_stalled(conn: socket.socket, data: memoryview, stall: float = 1.0) -> int:
    """Send ``data`` until the server takes nothing for ``stall`` seconds; bytes taken."""
    conn.settimeout(stall)
    sent = 0
    try:
        while sent < len(data):
            sent += conn.send(data[sent : sent + 64 * 1024])
    except TimeoutError:
        pass
    conn.settimeout(30)
    return sent


def _answer(conn: socket.socket) -> bytes:
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
        piece = conn.recv(65536)
        if not piece:
            break
        answer += piece
    return answer


@pytest.mark.django_db(transaction=True)
def test_a_chunk_waiting_for_the_budget_is_not_read_then_is_stored_when_room_comes(settings):
    settings.ALLOWED_HOSTS = ["testserver", "127.0.0.1"]
    budget = ChunkMemoryBudget(CHUNK)  # room for one chunk
    upload, _ = _upload(2)
    token = upload["upload_token"]
    first, second = os.urandom(CHUNK), os.urandom(CHUNK)
    with serving(budget) as port:
        holder = _start_put(port, upload, 0, first, token)
        holder.sendall(first[:MIB])  # a slow client: the rest comes later
        deadline = time.monotonic() + 10
        while budget.held != CHUNK:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        waiting = _start_put(port, upload, 1, second, token)
        taken = _send_until_stalled(waiting, memoryview(second))
        assert budget.waiting == 1 and budget.held == CHUNK
        # uvicorn stopped reading it (64 KiB unread pause it): the kernel's buffers took
        # the rest of what was sent, a small part of the 16 MiB.
        assert taken < 4 * MIB, taken
        holder.sendall(first[MIB:])
        assert _answer(holder).startswith(b"HTTP/1.1 200 ")
        waiting.sendall(second[taken:])
        assert _answer(waiting).startswith(b"HTTP/1.1 200 ")
        holder.close()
        waiting.close()
    assert budget.held == 0 and budget.waiting == 0
    stored = UploadChunk.objects.filter(session_id=upload["upload_id"], stored=True)
    assert sorted(stored.values_list("index", flat=True)) == [0, 1]


@pytest.mark.django_db(transaction=True)
def test_a_chunk_that_waits_too_long_is_answered_busy_with_retry_after(settings):
    settings.ALLOWED_HOSTS = ["testserver", "127.0.0.1"]
    settings.CHUNK_MEMORY_WAIT_SECONDS = 0.5
    budget = ChunkMemoryBudget(CHUNK)
    upload, access = _upload(2)
    data = os.urandom(CHUNK)
    refused_before = _busy_refusals()
    with serving(budget) as port:
        holder = _start_put(port, upload, 0, data, upload["upload_token"])
        holder.sendall(data[:MIB])
        deadline = time.monotonic() + 10
        while budget.held != CHUNK:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # Either credential: an upload token, the owner's access token.
        for token in (upload["upload_token"], access):
            waiting = _start_put(port, upload, 1, data, token)
            began = time.monotonic()
            answer = _answer(waiting)
            assert 0.4 < time.monotonic() - began < 10
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 "), head
            assert f"retry-after: {RETRY_AFTER_SECONDS}".encode() in head.lower()
            assert b'"code": "server_busy"' in body
            assert b"The server is receiving many chunks at once" in body
            waiting.close()
        holder.close()  # the holder goes away mid-body: its bytes come back
        deadline = time.monotonic() + 10
        while budget.held:
            assert time.monotonic() < deadline, budget.held
            time.sleep(0.01)
    assert budget.waiting == 0
    assert not UploadChunk.objects.filter(session_id=upload["upload_id"]).exists()
    # Counted apart from other refusals, so that an operator sees the budget is too small.
    assert _busy_refusals() - refused_before == 2


@pytest.mark.django_db(transaction=True)
def test_a_chunk_put_without_a_valid_credential_never_waits_for_or_takes_the_budget(settings):
    """Nobody can fill the budget (and stall every clinic's chunks) without signing in:
    with the budget full, a PUT with no credential or a made-up token is refused at once."""
    settings.ALLOWED_HOSTS = ["testserver", "127.0.0.1"]
    settings.CHUNK_MEMORY_WAIT_SECONDS = 20
    budget = ChunkMemoryBudget(CHUNK)
    upload, access = _upload(2)
    data = os.urandom(CHUNK)
    forged = access[:-4] + ("AAAA" if not access.endswith("AAAA") else "BBBB")
    with serving(budget) as port:
        holder = _start_put(port, upload, 0, data, upload["upload_token"])
        holder.sendall(data[:MIB])
        deadline = time.monotonic() + 10
        while budget.held != CHUNK:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for token in ("", forged, "not-a-jwt"):
            conn = _start_put(port, upload, 1, data, token)
            began = time.monotonic()
            conn.sendall(data)
            answer = _answer(conn)
            assert time.monotonic() - began < 10  # not the 20 s wait
            assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
            assert budget.waiting == 0 and budget.held == CHUNK
            conn.close()
        holder.close()
    assert not UploadChunk.objects.filter(session_id=upload["upload_id"], index=1).exists()


@pytest.mark.django_db(transaction=True)
def test_a_client_that_leaves_while_waiting_or_reading_gives_its_bytes_back(settings):
    settings.ALLOWED_HOSTS = ["testserver", "127.0.0.1"]
    budget = ChunkMemoryBudget(CHUNK)
    upload, access = _upload(2)
    data = os.urandom(CHUNK)
    with serving(budget) as port:
        holder = _start_put(port, upload, 0, data, upload["upload_token"])
        holder.sendall(data[:MIB])
        leavers = [_start_put(port, upload, 1, data, t) for t in (upload["upload_token"], access)]
        deadline = time.monotonic() + 10
        while budget.waiting != 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for conn in leavers:
            conn.close()
        holder.close()
        while budget.held or budget.waiting:
            assert time.monotonic() < deadline, (budget.held, budget.waiting)
            time.sleep(0.01)
        # Room again: a whole chunk goes through.
        sender = _start_put(port, upload, 1, data, upload["upload_token"])
        sender.sendall(data)
        assert _answer(sender).startswith(b"HTTP/1.1 200 ")
        sender.close()
    assert budget.held == 0
