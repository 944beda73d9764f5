"""The stream against the product as `serve` starts it (uvicorn with two web processes, a
real Celery worker and beat), with the embedded default (SQLite, filesystem broker, no
Redis: the database check wakes the streams) and with Redis (``REDIS_URL``: channels-redis
wake-ups; the database check only every 5 s)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from uploads.tests.helpers import HttpUploader, sample_paths
from uploads.tests.product import REPO, RunningProduct, running_product

from .live_clients import SseClient, WsClient, serving_pid

pytestmark = pytest.mark.e2e

PASSWORD = "a long admin password"
REDIS_FOR_TESTS = "redis://127.0.0.1:6379/"


def _redis_url() -> str:
    """The Redis database of this test run (the broker's number), for channels-redis."""
    import os

    broker = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/7")
    return broker if broker.startswith("redis://") else REDIS_FOR_TESTS + "7"


@pytest.fixture(scope="module", params=["embedded", "redis"])
def product(
    request: Any, tmp_path_factory: pytest.TempPathFactory, orthanc: Any
) -> Iterator[RunningProduct]:
    overrides = {
        "WEB_WORKERS": "2",
        "NOTIFICATIONS_SESSION_CHECK_SECONDS": "1",
        "NOTIFICATIONS_HEARTBEAT_SECONDS": "25",
    }
    if request.param == "redis":
        overrides["REDIS_URL"] = _redis_url()
        # Redis for the channel layer (and cache) only: on the test run's Redis database
        # the session's own Celery worker (uploads.tests.fixtures) would take this
        # product's tasks, so its worker keeps the embedded broker.
        overrides["CELERY_BROKER_URL"] = "filesystem://"
        # The database check 30 s apart: only the wake-up can deliver within seconds.
        overrides["NOTIFICATIONS_POLL_SECONDS"] = "30"
    with running_product(
        tmp_path_factory.mktemp(f"live-{request.param}"), orthanc, **overrides
    ) as running:
        subprocess.run(
            [sys.executable, "manage.py", "createsuperuser", "--noinput"],
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=120,
            env={
                **running.env,
                "DJANGO_SUPERUSER_USERNAME": "admin",
                "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
                "DJANGO_SUPERUSER_EMAIL": "admin@example.org",
            },
        )
        yield running


def _login(product: RunningProduct) -> dict[str, str]:
    response = requests.post(
        f"{product.base}/api/v1/auth/login",
        json={"username": "admin", "password": PASSWORD},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def _ticket(product: RunningProduct, access: str) -> str:
    response = requests.post(
        f"{product.base}/api/v1/notifications/ticket",
        headers={"Authorization": f"Bearer {access}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["ticket"])


def _clients_on_both_web_processes(product: RunningProduct, access: str) -> dict[int, WsClient]:
    """WebSocket clients until each of the two uvicorn workers serves one."""
    by_pid: dict[int, WsClient] = {}
    spare: list[WsClient] = []
    deadline = time.monotonic() + 60
    while len(by_pid) < 2 and time.monotonic() < deadline:
        client = WsClient(product.base, access=access)
        pid = None
        for _ in range(50):
            pid = serving_pid(product.process.pid, client.local_port)
            if pid:
                break
            time.sleep(0.05)
        if pid and pid not in by_pid:
            by_pid[pid] = client
        else:
            spare.append(client)
    for client in spare:
        client.close()
    assert len(by_pid) == 2, "every connection landed on the same web process"
    return by_pid


def test_an_upload_completed_by_the_worker_reaches_clients_on_both_web_processes(
    product, orthanc_clean
):
    access = _login(product)["access"]
    clients = _clients_on_both_web_processes(product, access)
    for client in clients.values():
        assert client.resume(None)["type"] == "ready"
    sse = SseClient(product.base, ticket=_ticket(product, access))
    assert sse.status_code == 200
    assert sse.next()["type"] == "ready"
    assert serving_pid(product.process.pid, sse.local_port) in clients

    uploader = HttpUploader(product.base, access, 1024 * 1024)
    paths = sample_paths()
    upload = uploader.init(paths)
    uploader.send(upload, paths)
    uploader.complete(upload)

    for name, client in [*((f"ws@{pid}", c) for pid, c in clients.items()), ("sse", sse)]:
        seen: list[str] = []
        while "upload.completed" not in seen:
            message = client.next()
            if message["type"].startswith("report."):
                continue  # the report this upload opened (the admin sent it)
            assert message["upload_id"] == upload["upload_id"], (name, message)
            seen.append(message["type"])
        assert seen == [
            "upload.started",
            "upload.received",
            "upload.forwarding",
            "upload.completed",
        ], (
            name,
            seen,
        )
        assert message["state"] == "completed"
        note = message["notification"]
        assert note["kind"] == "upload_completed" and note["upload_id"] == upload["upload_id"]
        assert note["title"].endswith("was received by the PACS")
    for client in clients.values():
        client.close()
    sse.close()

    listed = requests.get(
        f"{product.base}/api/v1/notifications",
        headers={"Authorization": f"Bearer {access}"},
        timeout=30,
    ).json()
    assert listed["unread_count"] == 1 and listed["results"][0]["id"] == note["id"]


def _three_events(product: RunningProduct, access: str) -> list[str]:
    """Three real events through the API: a notification's read state toggled three
    times; returns the event types, in order."""
    headers = {"Authorization": f"Bearer {access}"}
    listed = requests.get(
        f"{product.base}/api/v1/notifications", headers=headers, timeout=30
    ).json()
    assert listed["results"], "the first test made a notification"
    first = listed["results"][0]
    actions = ["unread", "read", "unread"] if first["read"] else ["read", "unread", "read"]
    for action in actions:
        response = requests.post(
            f"{product.base}/api/v1/notifications/{first['id']}/{action}",
            headers=headers,
            timeout=30,
        )
        assert response.status_code == 200, response.text
    return [f"notifications.{action}" for action in actions]


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_reconnecting_with_the_last_id_gets_exactly_the_three_missed_in_order(product, transport):
    access = _login(product)["access"]
    _three_events(product, access)  # whatever came before
    # The baseline is taken after 1.5 s of listening: an earlier test's work can still make
    # events for this user after it ended (the report its upload opened, on a busy machine),
    # and those belong before the baseline, not among the three.
    if transport == "websocket":
        first = WsClient(product.base, access=access)
        last = first.resume(None)["id"]
        for late in first.others_within(1.5):
            assert late.get("id", 0) > last, late  # new, never one sent before
            last = late["id"]
        first.close()
    else:
        sse = SseClient(product.base, access=access)
        last = sse.next()["id"]
        for late in sse.others_within(1.5):
            assert late.get("id", 0) > last, late  # new, never one sent before
            last = late["id"]
        sse.close()
    expected = _three_events(product, access)
    types_after: list[dict[str, Any]] = []
    if transport == "websocket":
        again = WsClient(product.base, ticket=_ticket(product, access))
        assert again.resume(last) == {"type": "ready", "id": last}
        types_after = [again.next() for _ in range(3)]
        assert again.others_within(1.5) == []  # exactly those three
        again.close()
    else:
        resumed = SseClient(product.base, access=access, last_event_id=last)
        assert resumed.next() == {"type": "ready", "id": last}
        types_after = [resumed.next() for _ in range(3)]
        assert resumed.others_within(1.5) == []  # exactly those three
        resumed.close()
    assert [m["type"] for m in types_after] == expected
    assert [m["id"] for m in types_after] == [last + 1, last + 2, last + 3]


def test_a_live_event_arrives_within_two_seconds(product):
    """With Redis the database check is 30 s apart here, so this is the wake-up's doing."""
    access = _login(product)["access"]
    ws = WsClient(product.base, access=access)
    sse = SseClient(product.base, access=access)
    last = ws.resume(None)["id"]
    assert sse.next()["id"] == last
    expected = _three_events(product, access)
    sent = time.monotonic()  # the last of the three committed before its answer
    ws_got = [ws.next(timeout=5) for _ in range(3)]
    sse_got = [sse.next() for _ in range(3)]
    assert time.monotonic() - sent < 2
    assert [m["type"] for m in ws_got] == [m["type"] for m in sse_got] == expected
    ws.close()
    sse.close()


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_a_revoked_session_closes_the_stream(product, transport):
    tokens = _login(product)
    client: Any = (
        WsClient(product.base, access=tokens["access"])
        if transport == "websocket"
        else SseClient(product.base, access=tokens["access"])
    )
    if transport == "websocket":
        client.resume(None)
    else:
        client.next()
    logout = requests.post(
        f"{product.base}/api/v1/auth/logout", json={"refresh": tokens["refresh"]}, timeout=30
    )
    assert logout.status_code == 204, logout.text
    started = time.monotonic()
    assert client.next() == {"type": "closed", "reason": "session_ended"}
    assert time.monotonic() - started < 15
    if transport == "websocket":
        from websockets.exceptions import ConnectionClosed

        with pytest.raises(ConnectionClosed) as closed:
            client.ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    else:
        with pytest.raises(EOFError):
            client.next()
    # The same access token no longer opens a stream.
    refused = SseClient(product.base, access=tokens["access"])
    assert refused.status_code == 401


def test_a_used_ticket_is_refused(product):
    access = _login(product)["access"]
    ticket = _ticket(product, access)
    first = SseClient(product.base, ticket=ticket)
    assert first.status_code == 200
    first.close()
    again = SseClient(product.base, ticket=ticket)
    assert again.status_code == 401
    assert again.response.json()["error"]["code"] == "ticket_invalid"
    ws = WsClient(product.base, ticket=ticket)
    refused = ws.next()
    assert refused["type"] == "error" and refused["error"]["code"] == "ticket_invalid"
    # An access token never goes in a URL: `?access=` or `?token=` open nothing.
    no_token = requests.get(
        f"{product.base}/api/v1/notifications/stream", params={"token": access}, timeout=30
    )
    assert no_token.status_code == 401
