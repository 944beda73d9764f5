"""The lean ASGI endpoint of the SSE stream (sse_endpoint.py) answers exactly as the Django
view does, and its streams behave as the view's: resume, live events, heartbeats, the end
of a revoked session, the client leaving."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from accounts.models import AuthSession
from notifications import live, services
from notifications.sse_endpoint import SseEndpoint
from relaypacs.asgi import application, django_asgi_app

from .conftest import sign_in

# The streams' threads use their own connections: the data must be committed.
pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT = 10
STREAM = "/api/v1/notifications/stream"


async def _not_django(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError(f"{scope['method']} {scope['path']} reached Django")


# The lean endpoint alone: a request it passed on to Django would fail the test.
lean = SseEndpoint(fallback=_not_django)


def _scope(method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    """An HTTP scope as uvicorn makes it."""
    path, _, query = path.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [
            (k.lower().encode(), v.encode()) for k, v in {"Host": "testserver", **headers}.items()
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


class AsgiRequest:
    """One request through an ASGI app as uvicorn hands it over; the client stays
    connected until ``leave()``."""

    def __init__(
        self, app: Any, path: str, headers: dict[str, str] | None = None, method: str = "GET"
    ) -> None:
        self.app = app
        self.scope = _scope(method, path, headers or {})
        self.sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.asked = False
        self.left = asyncio.Event()
        self.ended = False
        self.buffer = ""
        self.task = asyncio.ensure_future(app(self.scope, self.receive, self.sent.put))

    async def receive(self) -> dict[str, Any]:
        if not self.asked:
            self.asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def start(self) -> tuple[int, dict[str, str]]:
        message = await asyncio.wait_for(self.sent.get(), TIMEOUT)
        assert message["type"] == "http.response.start"
        # By lower-case name; Vary left out: Django's says Cookie (its session middleware
        # was asked for the user), the lean endpoint never reads cookies (docstring there).
        headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        if self.app is not lean:
            headers.pop("vary", None)
        else:
            assert "vary" not in headers
        return message["status"], headers

    async def body(self) -> bytes:
        """The rest of a response that ends by itself (an error)."""
        parts = []
        while not self.ended:
            message = await asyncio.wait_for(self.sent.get(), TIMEOUT)
            parts.append(message.get("body", b""))
            self.ended = not message.get("more_body", False)
        return b"".join(parts)

    async def next(self, skip: tuple[str, ...] = ("heartbeat",)) -> dict[str, Any]:
        """The next SSE data message (``id:`` checked against the data's id)."""
        while True:
            while "\n\n" in self.buffer:
                block, self.buffer = self.buffer.split("\n\n", 1)
                lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
                if "data" in lines:
                    message: dict[str, Any] = json.loads(lines["data"])
                    if "id" in lines:
                        assert int(lines["id"]) == message["id"]
                    if message["type"] not in skip:
                        return message
            if self.ended:
                raise EOFError("the stream ended")
            sent = await asyncio.wait_for(self.sent.get(), TIMEOUT)
            self.buffer += sent.get("body", b"").decode()
            self.ended = not sent.get("more_body", False)

    async def leave(self) -> None:
        self.left.set()
        await asyncio.wait_for(self.task, TIMEOUT)


async def _answer(app: Any, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    get = AsgiRequest(app, path, headers)
    status, answered = await get.start()
    body = await get.body()
    await get.leave()
    return status, answered, json.loads(body)


async def _append(user_id: int, type: str = "upload.completed") -> None:
    await sync_to_async(services.event_append)(user_id=user_id, type=type, state="completed")


async def _ticket(signed_in: Any) -> str:
    ticket, _ = await sync_to_async(services.stream_ticket_issue)(
        user_id=signed_in.user.pk,
        session_id=signed_in.session.pk,
        access_expires_at=timezone.now() + timedelta(minutes=5),
    )
    return ticket


def _revoke(signed_in: Any) -> Any:
    return sync_to_async(
        lambda: AuthSession.objects.filter(pk=signed_in.session.pk).update(
            revoked_at=timezone.now()
        )
    )()


def test_the_lean_endpoint_refuses_every_case_as_the_django_view(signed_in, technician):
    """Status, body and every header (the request id sent, so that it is the same)."""
    ended = sign_in(technician)
    expiring = sign_in(technician, lifetime=timedelta(seconds=-5))

    async def scenario() -> None:
        used = await _ticket(signed_in)
        opened = AsgiRequest(lean, f"{STREAM}?ticket={used}")
        assert (await opened.start())[0] == 200
        assert (await opened.next())["type"] == "ready"
        await opened.leave()
        ended_ticket = await _ticket(ended)
        await sync_to_async(
            lambda: AuthSession.objects.filter(pk=ended.session.pk).update(
                revoked_at=timezone.now()
            )
        )()
        cases: list[tuple[str, dict[str, str], str]] = [
            (STREAM, {}, "not_authenticated"),
            (STREAM, {"Authorization": "Basic dXNlcjpwdw=="}, "authentication_failed"),
            (STREAM, {"Authorization": "Bearer upl_abc.def"}, "authentication_failed"),
            (STREAM, {"Authorization": "Bearer"}, "authentication_failed"),
            (STREAM, {"Authorization": "Bearer not-a-token"}, "authentication_failed"),
            (STREAM, {"Authorization": f"Bearer {expiring.access}"}, "authentication_failed"),
            (STREAM, {"Authorization": f"Bearer {ended.access}"}, "authentication_failed"),
            (f"{STREAM}?ticket=tkt_unknown", {}, "ticket_invalid"),
            (f"{STREAM}?ticket={used}", {}, "ticket_invalid"),
            (f"{STREAM}?ticket={ended_ticket}", {}, "authentication_failed"),
            (f"{STREAM}?ticket=", {"Last-Event-ID": "3"}, "not_authenticated"),
        ]
        for path, headers, code in cases:
            headers = {**headers, "X-Request-ID": "req-compare-1"}
            mine = await _answer(lean, path, headers)
            if ended_ticket in path:
                # A ticket is single use: Django's answer needs a ticket of its own.
                path = f"{STREAM}?ticket={await _ticket(ended)}"
            django = await _answer(django_asgi_app, path, headers)
            assert mine == django, (path, headers)
            status, answered, body = mine
            assert status == 401, path
            assert body["error"]["code"] == code, path
            assert body["error"]["message"].endswith("."), path
            assert answered["www-authenticate"] == 'Bearer realm="api"'
            assert answered["x-request-id"] == "req-compare-1"
            assert answered["x-content-type-options"] == "nosniff"

    asyncio.run(scenario())


def test_a_stream_has_the_view_s_headers_and_messages(signed_in, fast_stream):
    """The same GET through the lean endpoint and through Django: same status, headers and
    backlog; then a live event reaches the lean one, which leaves the hub when the client
    goes away."""

    async def scenario() -> None:
        for name in ["upload.started", "upload.received", "upload.completed"]:
            await _append(signed_in.user.pk, name)
        headers = {
            "Authorization": f"Bearer {signed_in.access}",
            "Last-Event-ID": "1",
            "X-Request-ID": "req-compare-2",
        }
        django = AsgiRequest(django_asgi_app, STREAM, headers)
        mine = AsgiRequest(lean, STREAM, headers)
        started = await mine.start()
        assert started == await django.start()
        status, answered = started
        assert status == 200
        assert answered["content-type"] == "text/event-stream; charset=utf-8"
        assert answered["cache-control"] == "no-cache, no-store"
        assert answered["x-accel-buffering"] == "no"
        assert "content-length" not in answered
        first = await asyncio.wait_for(mine.sent.get(), TIMEOUT)
        assert first["body"] == b"retry: 3000\n\n"
        backlog = [await mine.next() for _ in range(3)]
        assert backlog == [await django.next() for _ in range(3)]
        assert [(m["type"], m["id"]) for m in backlog] == [
            ("ready", 1),
            ("upload.received", 2),
            ("upload.completed", 3),
        ]
        await django.leave()
        await _append(signed_in.user.pk, "upload.cancelled")
        live_one = await mine.next()
        assert (live_one["type"], live_one["id"]) == ("upload.cancelled", 4)
        assert signed_in.user.pk in live.hub().listeners
        await mine.leave()
        assert signed_in.user.pk not in live.hub().listeners
        assert not live.hub().sessions

    asyncio.run(scenario())


def test_a_ticket_and_last_event_id_in_the_query_and_heartbeats(signed_in, fast_stream):
    async def scenario() -> None:
        await _append(signed_in.user.pk)
        await _append(signed_in.user.pk)
        ticket = await _ticket(signed_in)
        stream = AsgiRequest(application, f"{STREAM}?ticket={ticket}&last_event_id=1")
        assert (await stream.start())[0] == 200
        assert [(await stream.next())["id"] for _ in range(2)] == [1, 2]
        # Idle: heartbeats every NOTIFICATIONS_HEARTBEAT_SECONDS (0.5 s here).
        assert (await stream.next(skip=()))["type"] == "heartbeat"
        assert (await stream.next(skip=()))["type"] == "heartbeat"
        await stream.leave()

    asyncio.run(scenario())


def test_the_lean_stream_ends_when_the_session_is_revoked(signed_in, fast_stream):
    async def scenario() -> None:
        stream = AsgiRequest(lean, STREAM, {"Authorization": f"Bearer {signed_in.access}"})
        assert (await stream.start())[0] == 200
        assert (await stream.next())["type"] == "ready"
        await _revoke(signed_in)
        assert await stream.next() == {"type": "closed", "reason": "session_ended"}
        with pytest.raises(EOFError):
            await stream.next()
        # The response ended by itself, before the client left.
        await asyncio.wait_for(asyncio.shield(stream.task), TIMEOUT)
        assert not live.hub().listeners
        await stream.leave()

    asyncio.run(scenario())


def test_live_deliveries_are_timed_with_the_sse_transport(signed_in, fast_stream):
    from prometheus_client import REGISTRY

    def delivered() -> float:
        value = REGISTRY.get_sample_value(
            "relaypacs_event_delivery_seconds_count", {"transport": "sse"}
        )
        return value or 0.0

    async def scenario() -> None:
        await _append(signed_in.user.pk)  # replayed backlog: not timed
        before = delivered()
        stream = AsgiRequest(lean, STREAM, {"Authorization": f"Bearer {signed_in.access}"})
        await stream.start()
        assert await stream.next() == {"type": "ready", "id": 1}
        await _append(signed_in.user.pk)
        assert (await stream.next())["id"] == 2
        await stream.leave()
        assert delivered() == before + 1

    asyncio.run(scenario())


def test_requests_the_endpoint_does_not_serve_reach_django(signed_in, settings):
    settings.ALLOWED_HOSTS = ["testserver"]

    async def scenario() -> None:
        reached: list[str] = []

        async def fallback(scope: Any, receive: Any, send: Any) -> None:
            reached.append(f"{scope['method']} {scope['path']}")
            await django_asgi_app(scope, receive, send)

        endpoint = SseEndpoint(fallback=fallback)
        bearer = {"Authorization": f"Bearer {signed_in.access}"}
        # Another path (APPEND_SLASH and the rest are Django's), another host.
        other = await _answer(endpoint, "/api/v1/notifications/ticket", bearer)
        assert other[0] == 405
        status, _, _ = await _raw(endpoint, STREAM, {**bearer, "Host": "evil.example"})
        assert status == 400
        assert reached == ["GET /api/v1/notifications/ticket", f"GET {STREAM}"]

        # Other methods: Django's 405 in the error shape, through the whole application.
        refused = AsgiRequest(application, STREAM, bearer, method="POST")
        status, answered = await refused.start()
        body = json.loads(await refused.body())
        await refused.leave()
        assert (status, answered["allow"]) == (405, "GET")
        assert body["error"]["code"] == "method_not_allowed"

    asyncio.run(scenario())


def test_plain_http_under_ssl_redirect_and_https_are_decided_as_django_does(signed_in, settings):
    """Plain HTTP under SECURE_SSL_REDIRECT goes to Django (its redirect); HTTPS behind the
    proxy is served, with Django's HSTS header."""
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    settings.SECURE_HSTS_SECONDS = 3600
    # No channel layer: a stream this short would leave channels-redis connecting when
    # asyncio.run ends, which can hang its teardown (the hub's wake-ups are not tested here).
    settings.CHANNEL_LAYERS = {}

    async def scenario() -> None:
        reached: list[str] = []

        async def fallback(scope: Any, receive: Any, send: Any) -> None:
            reached.append(scope["path"])
            await send({"type": "http.response.start", "status": 301, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        endpoint = SseEndpoint(fallback=fallback)
        bearer = {"Authorization": f"Bearer {signed_in.access}"}
        status, _, _ = await _raw(endpoint, STREAM, bearer)
        assert (status, reached) == (301, [STREAM])
        stream = AsgiRequest(endpoint, STREAM, {**bearer, "X-Forwarded-Proto": "https"})
        status, answered = await stream.start()
        assert (await stream.next())["type"] == "ready"
        await stream.leave()
        assert (status, reached) == (200, [STREAM])
        assert answered["strict-transport-security"] == "max-age=3600"

    asyncio.run(scenario())


async def _raw(app: Any, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    get = AsgiRequest(app, path, headers)
    status, answered = await get.start()
    body = await get.body()
    await get.leave()
    return status, answered, body


@pytest.mark.parametrize("value", ["²", "1²", "9" * 5000, "-1", " ", "1e3", "3"])
def test_a_last_event_id_that_is_not_a_plain_number_means_from_now(value):
    # "²" passes str.isdigit() but not int(); 5,000 digits pass both but not Python's limit.
    assert live.parse_position(value) == (3 if value == "3" else None)


def test_an_unexpected_failure_opening_a_stream_is_the_error_shape_not_a_bare_500(
    signed_in, monkeypatch
):
    def database_down(**kwargs: Any) -> Any:
        raise ConnectionError("the database is down")

    monkeypatch.setattr(live, "stream_authenticate", database_down)

    async def scenario() -> None:
        status, headers, body = await _answer(
            lean, STREAM, {"Authorization": f"Bearer {signed_in.access}"}
        )
        assert status == 500
        assert body["error"]["code"] == "server_error"
        assert body["error"]["message"] == "The server could not open the live updates."
        assert headers["x-content-type-options"] == "nosniff"

    asyncio.run(scenario())
