"""Both transports in-process: the WebSocket consumer (channels' WebsocketCommunicator)
and the SSE view (Django's async test client), on the test database."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient
from django.utils import timezone

from accounts.models import AuthSession
from notifications import live, services
from notifications.routing import websocket_urlpatterns

from .conftest import sign_in

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 10


def _ws(headers: list[tuple[bytes, bytes]] | None = None, query: str = "") -> WebsocketCommunicator:
    return WebsocketCommunicator(
        URLRouter(websocket_urlpatterns), f"/ws/notifications{query}", headers=headers or []
    )


def _bearer(access: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {access}".encode())]


async def _append(user_id: int, type: str = "upload.completed") -> None:
    await sync_to_async(services.event_append)(user_id=user_id, type=type, state="completed")


async def _next(
    ws: WebsocketCommunicator, skip: tuple[str, ...] = ("heartbeat",)
) -> dict[str, Any]:
    while True:
        message = await ws.receive_json_from(timeout=TIMEOUT)
        if message["type"] not in skip:
            return message


async def _only_heartbeats(ws: WebsocketCommunicator, *, seconds: float) -> bool:
    deadline = asyncio.get_running_loop().time() + seconds
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        if await ws.receive_nothing(timeout=left, interval=0.02):
            return True
        if (await ws.receive_json_from())["type"] != "heartbeat":
            return False
    return True


def test_websocket_sends_live_events_after_ready(signed_in, fast_stream):
    async def scenario() -> None:
        ws = _ws(_bearer(signed_in.access))
        connected, _ = await ws.connect(timeout=TIMEOUT)
        assert connected
        await ws.send_json_to({"type": "resume", "after": None})
        assert await _next(ws) == {"type": "ready", "id": 0}
        await _append(signed_in.user.pk)
        event = await _next(ws)
        assert (
            event["id"] == 1
            and event["type"] == "upload.completed"
            and event["state"] == "completed"
        )
        await ws.disconnect()

    asyncio.run(scenario())


def _delivered_count(transport: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "relaypacs_event_delivery_seconds_count", {"transport": transport}
    )
    return value or 0.0


def test_live_events_are_timed_and_a_replayed_backlog_is_not(signed_in, fast_stream):
    async def scenario() -> None:
        # Two events stored before the stream opens: replayed, not timed.
        await _append(signed_in.user.pk)
        await _append(signed_in.user.pk)
        before = _delivered_count("websocket")
        ws = _ws(_bearer(signed_in.access))
        connected, _ = await ws.connect(timeout=TIMEOUT)
        assert connected
        await ws.send_json_to({"type": "resume", "after": 0})
        assert await _next(ws) == {"type": "ready", "id": 0}
        assert [(await _next(ws))["id"] for _ in range(2)] == [1, 2]
        await _append(signed_in.user.pk)
        assert (await _next(ws))["id"] == 3
        await ws.disconnect()
        assert _delivered_count("websocket") == before + 1

    asyncio.run(scenario())


def test_websocket_resume_replays_exactly_what_was_missed_in_order(signed_in, fast_stream):
    async def scenario() -> None:
        for name in ["upload.started", "upload.received", "upload.forwarding", "upload.completed"]:
            await _append(signed_in.user.pk, name)
        ws = _ws(_bearer(signed_in.access))
        await ws.connect(timeout=TIMEOUT)
        await ws.send_json_to({"type": "resume", "after": 1})
        assert await _next(ws) == {"type": "ready", "id": 1}
        got = [await _next(ws) for _ in range(3)]
        assert [(m["id"], m["type"]) for m in got] == [
            (2, "upload.received"),
            (3, "upload.forwarding"),
            (4, "upload.completed"),
        ]
        await _append(signed_in.user.pk, "upload.cancelled")
        assert (await _next(ws))["id"] == 5
        assert await _only_heartbeats(ws, seconds=0.5)  # each event once
        await ws.disconnect()

    asyncio.run(scenario())


def test_websocket_heartbeats_while_idle(signed_in, fast_stream):
    async def scenario() -> None:
        ws = _ws(_bearer(signed_in.access))
        await ws.connect(timeout=TIMEOUT)
        await ws.send_json_to({"type": "resume", "after": None})
        await _next(ws)
        assert (await ws.receive_json_from(timeout=TIMEOUT)) == {"type": "heartbeat"}
        await ws.disconnect()

    asyncio.run(scenario())


def test_websocket_without_a_resume_streams_from_now(signed_in, fast_stream):
    async def scenario() -> None:
        await _append(signed_in.user.pk)
        ws = _ws(_bearer(signed_in.access))
        await ws.connect(timeout=TIMEOUT)
        assert await _next(ws) == {"type": "ready", "id": 1}  # after the grace period
        await ws.disconnect()

    asyncio.run(scenario())


def test_websocket_ticket_works_once(signed_in, fast_stream):
    async def scenario() -> None:
        ticket, _ = await sync_to_async(services.stream_ticket_issue)(
            user_id=signed_in.user.pk,
            session_id=signed_in.session.id,
            access_expires_at=timezone.now() + timedelta(minutes=5),
        )
        first = _ws(query=f"?ticket={ticket}")
        await first.connect(timeout=TIMEOUT)
        await first.send_json_to({"type": "resume", "after": None})
        assert (await _next(first))["type"] == "ready"
        again = _ws(query=f"?ticket={ticket}")
        await again.connect(timeout=TIMEOUT)
        refused = await again.receive_json_from(timeout=TIMEOUT)
        assert refused["type"] == "error" and refused["error"]["code"] == "ticket_invalid"
        closed = await again.receive_output(timeout=TIMEOUT)
        assert closed == {"type": "websocket.close", "code": 4401}
        await first.disconnect()

    asyncio.run(scenario())


def test_websocket_refuses_upload_tokens_and_no_credentials(fast_stream, db):
    async def scenario() -> None:
        for headers in (
            [(b"authorization", b"Bearer upl_abc")],
            [],
            [(b"authorization", b"Bearer nonsense")],
        ):
            ws = _ws(headers)
            await ws.connect(timeout=TIMEOUT)
            refused = await ws.receive_json_from(timeout=TIMEOUT)
            assert refused["type"] == "error", refused
            assert (await ws.receive_output(timeout=TIMEOUT))["code"] == 4401

    asyncio.run(scenario())


def test_websocket_closes_when_the_session_is_revoked(signed_in, fast_stream):
    async def scenario() -> None:
        ws = _ws(_bearer(signed_in.access))
        await ws.connect(timeout=TIMEOUT)
        await ws.send_json_to({"type": "resume", "after": None})
        await _next(ws)
        await sync_to_async(
            lambda: AuthSession.objects.filter(pk=signed_in.session.pk).update(
                revoked_at=timezone.now()
            )
        )()
        assert await _next(ws) == {"type": "closed", "reason": "session_ended"}
        assert (await ws.receive_output(timeout=TIMEOUT))["code"] == 4401

    asyncio.run(scenario())


def test_websocket_closes_when_the_access_token_expires(technician, fast_stream):
    short = sign_in(technician, lifetime=timedelta(seconds=2))

    async def scenario() -> None:
        ws = _ws(_bearer(short.access))
        await ws.connect(timeout=TIMEOUT)
        await ws.send_json_to({"type": "resume", "after": None})
        await _next(ws)
        assert await _next(ws) == {"type": "closed", "reason": "token_expired"}

    asyncio.run(scenario())


class SseReader:
    """The data messages of an SSE response one at a time (heartbeats skipped)."""

    def __init__(self, response: Any) -> None:
        self.iterator = response.streaming_content.__aiter__()
        self.buffer = ""
        self.ready: list[dict[str, Any]] = []

    async def next(self) -> dict[str, Any]:
        while not self.ready:
            chunk = await asyncio.wait_for(self.iterator.__anext__(), TIMEOUT)
            self.buffer += chunk.decode()
            while "\n\n" in self.buffer:
                block, self.buffer = self.buffer.split("\n\n", 1)
                lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
                if "data" in lines:
                    message = json.loads(lines["data"])
                    if message["type"] != "heartbeat":
                        if "id" in lines:
                            assert int(lines["id"]) == message["id"]
                        self.ready.append(message)
        return self.ready.pop(0)

    async def close(self) -> None:
        await self.iterator.aclose()


async def _sse_messages(response: Any, count: int) -> list[dict[str, Any]]:
    """The first ``count`` data messages (heartbeats skipped) of an SSE response."""
    buffer, out = "", []
    iterator = response.streaming_content.__aiter__()
    while len(out) < count:
        chunk = await asyncio.wait_for(iterator.__anext__(), TIMEOUT)
        buffer += chunk.decode()
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if "data" in lines:
                message = json.loads(lines["data"])
                if message["type"] != "heartbeat":
                    if "id" in lines:
                        assert int(lines["id"]) == message["id"]
                    out.append(message)
    await iterator.aclose()
    return out


def test_sse_resumes_from_last_event_id_and_streams_live(signed_in, fast_stream):
    async def scenario() -> None:
        for name in ["upload.started", "upload.received", "upload.completed"]:
            await _append(signed_in.user.pk, name)
        client = AsyncClient()
        response = await client.get(
            "/api/v1/notifications/stream",
            headers={"Authorization": f"Bearer {signed_in.access}", "Last-Event-ID": "1"},
        )
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/event-stream")
        reader = SseReader(response)
        backlog = [await reader.next() for _ in range(3)]
        assert [(m["type"], m["id"]) for m in backlog] == [
            ("ready", 1),
            ("upload.received", 2),
            ("upload.completed", 3),
        ]
        # Appended once the backlog was sent: this one can only arrive live.
        await _append(signed_in.user.pk, "upload.cancelled")
        live_one = await reader.next()
        assert (live_one["type"], live_one["id"]) == ("upload.cancelled", 4)
        await reader.close()

    asyncio.run(scenario())


def test_sse_with_a_ticket_and_last_event_id_in_the_query(signed_in, fast_stream):
    async def scenario() -> None:
        await _append(signed_in.user.pk)
        await _append(signed_in.user.pk)
        ticket, _ = await sync_to_async(services.stream_ticket_issue)(
            user_id=signed_in.user.pk,
            session_id=signed_in.session.id,
            access_expires_at=timezone.now() + timedelta(minutes=5),
        )
        client = AsyncClient()
        response = await client.get(f"/api/v1/notifications/stream?ticket={ticket}&last_event_id=1")
        assert response.status_code == 200
        assert [m["id"] for m in await _sse_messages(response, 2)] == [1, 2]
        used = await client.get(f"/api/v1/notifications/stream?ticket={ticket}")
        assert used.status_code == 401
        assert json.loads(used.content)["error"]["code"] == "ticket_invalid"

    asyncio.run(scenario())


def test_sse_says_reset_to_a_client_further_behind_than_kept(signed_in, fast_stream):
    async def scenario() -> None:
        await _append(signed_in.user.pk)
        response = await AsyncClient().get(
            "/api/v1/notifications/stream",
            headers={"Authorization": f"Bearer {signed_in.access}", "Last-Event-ID": "7"},
        )
        ready, reset = await _sse_messages(response, 2)
        assert ready == {"type": "ready", "id": 7}
        assert reset["type"] == "reset" and reset["id"] == 1

    asyncio.run(scenario())


def test_sse_ends_when_the_session_is_revoked(signed_in, fast_stream):
    async def scenario() -> None:
        response = await AsyncClient().get(
            "/api/v1/notifications/stream", headers={"Authorization": f"Bearer {signed_in.access}"}
        )
        reader = asyncio.ensure_future(_sse_messages(response, 2))
        await asyncio.sleep(0.1)
        await sync_to_async(
            lambda: AuthSession.objects.filter(pk=signed_in.session.pk).update(
                revoked_at=timezone.now()
            )
        )()
        assert (await reader)[1] == {"type": "closed", "reason": "session_ended"}

    asyncio.run(scenario())


def test_sse_refuses_without_credentials(db):
    async def scenario() -> None:
        response = await AsyncClient().get("/api/v1/notifications/stream")
        assert response.status_code == 401
        assert json.loads(response.content)["error"]["code"] == "not_authenticated"

    asyncio.run(scenario())


def test_with_redis_the_channel_layer_wakes_the_stream_at_once(signed_in, fast_stream, settings):
    """The database check is slowed to 30 s: only the channels-redis wake-up can deliver
    the event within the deadline."""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [settings.CELERY_BROKER_URL], "prefix": "relaypacs:test:"},
        }
    }
    settings.NOTIFICATIONS_POLL_SECONDS = 30
    settings.NOTIFICATIONS_HEARTBEAT_SECONDS = 60
    settings.NOTIFICATIONS_SESSION_CHECK_SECONDS = 60

    async def scenario() -> None:
        ws = _ws(_bearer(signed_in.access))
        await ws.connect(timeout=TIMEOUT)
        await ws.send_json_to({"type": "resume", "after": None})
        await _next(ws)
        # The hub (this event loop's) joins the user's group: wait for it, then append.
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while signed_in.user.pk not in live.hub().groups:
            assert asyncio.get_running_loop().time() < deadline, "the hub never joined"
            await asyncio.sleep(0.01)
        started = asyncio.get_running_loop().time()
        await _append(signed_in.user.pk)
        event = await asyncio.wait_for(_next(ws), 3)
        assert event["id"] == 1
        assert asyncio.get_running_loop().time() - started < 3
        await ws.disconnect()

    asyncio.run(scenario())


def test_sse_answers_other_methods_in_the_error_shape(db):
    async def scenario() -> None:
        response = await AsyncClient().post("/api/v1/notifications/stream")
        assert response.status_code == 405
        assert json.loads(response.content)["error"]["code"] == "method_not_allowed"

    asyncio.run(scenario())
