"""The live stream of a user, shared by both transports: SSE (the lean endpoint,
sse_endpoint.py, and the Django view behind it drive the same ``sse_open``) and the
WebSocket consumer.

One ``Hub`` per web process (per event loop) learns when a connected user has new events:
with a channel layer (``REDIS_URL``) from a wake-up message to the process's own channel,
and in every case from a database check every ``NOTIFICATIONS_POLL_SECONDS`` of the
``EventCounter`` rows of the users connected to this process (one indexed query, however
many connections; the counter row is updated in the same transaction as the event, so a
number seen there is committed). Each connection then reads its events from the database
(``selectors.events_after``): the database is the truth, a wake-up only says "look".
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connections
from django.utils import timezone

from relaypacs.errors import ApplicationError

from . import metrics, selectors, wakeup

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Threads (each with its own database connection) for the streams of one web process:
# their reads are a few indexed rows each; two keep a slow query from holding up the rest.
STREAM_DB_THREADS = 2
# The channel layer forgets group members after a day (channels-redis group_expiry):
# a process renews its memberships this often.
GROUP_RENEW_SECONDS = 3600

_executor = ThreadPoolExecutor(max_workers=STREAM_DB_THREADS, thread_name_prefix="stream-db")


def _release_connections() -> None:
    """Keep this thread's connection unless it failed or is too old (Django's
    ``close_if_unusable_or_obsolete``, as at the end of a request); closed after each call
    when CHUNK_DB_CONN_MAX_AGE is 0 (tests: no thread may hold the test database open)."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is None:
            continue
        if settings.CHUNK_DB_CONN_MAX_AGE <= 0:
            conn.close()
        else:
            conn.close_if_unusable_or_obsolete()


def _call(fn: Callable[..., T], kwargs: dict[str, Any]) -> T:
    try:
        return fn(**kwargs)
    finally:
        _release_connections()


async def in_db_thread(fn: Callable[..., T], **kwargs: Any) -> T:
    """Run a database function in the streams' own threads."""
    return await asyncio.get_running_loop().run_in_executor(_executor, _call, fn, kwargs)


# --- Authentication ---------------------------------------------------------------------


@dataclass(frozen=True)
class StreamAuth:
    """Who a stream is for and until when: the access token's (or ticket's) session and
    the access token's expiry."""

    user_id: int
    session_id: str | None
    expires_at: datetime


def _not_authenticated(message: str, code: str = "not_authenticated") -> ApplicationError:
    return ApplicationError(
        code,
        message,
        "Sign in again, or ask for a new ticket with POST /api/v1/notifications/ticket "
        "and connect with it within 30 seconds.",
        status_code=401,
    )


def _session_on(*, user_id: int, session_id: str | None) -> bool:
    """Whether a stream may open: the user is active and the session (``sid``) is neither
    revoked nor idle (accounts.selectors.auth_session_is_on). Read-only: an open stream is
    not use of the session, so the idle timeout runs while only the stream is open (the
    app's API calls and token refreshes are the use). Open streams are checked together
    by their hub (Hub._check_sessions)."""
    # Imported here: this module is imported while the app registry loads.
    from accounts.models import User  # noqa: PLC0415
    from accounts.selectors import auth_session_is_on  # noqa: PLC0415

    if not User.objects.filter(pk=user_id, is_active=True).exists():
        return False
    return session_id is None or auth_session_is_on(session_id=session_id, user_id=user_id)


def stream_authenticate(*, authorization: str, ticket: str) -> StreamAuth:
    """Who opens this stream: ``Authorization: Bearer <access token>`` or a ticket.

    Synchronous (database). Raises ApplicationError 401: no credentials, an upload token,
    an invalid or expired access token, an ended session, or a ticket that is unknown,
    used or older than 30 s. Redeeming a ticket uses it up, whatever happens next.
    """
    from rest_framework_simplejwt.authentication import JWTAuthentication  # noqa: PLC0415
    from rest_framework_simplejwt.exceptions import InvalidToken, TokenError  # noqa: PLC0415
    from rest_framework_simplejwt.settings import api_settings  # noqa: PLC0415

    from .services import stream_ticket_redeem  # noqa: PLC0415

    if authorization:
        scheme, _, raw = authorization.partition(" ")
        raw = raw.strip()
        if scheme.lower() != "bearer" or not raw or raw.startswith("upl_"):
            raise _not_authenticated(
                "The stream needs your sign-in (an access token), not an upload key.",
                "authentication_failed",
            )
        try:
            validated = JWTAuthentication().get_validated_token(raw.encode())
        except (InvalidToken, TokenError) as exc:
            raise _not_authenticated(
                "Your sign-in could not be checked or has expired.", "authentication_failed"
            ) from exc
        user_id = int(validated[api_settings.USER_ID_CLAIM])
        sid = validated.get("sid")
        session_id = str(sid) if sid is not None else None
        if not _session_on(user_id=user_id, session_id=session_id):
            raise _not_authenticated("This session has ended.", "authentication_failed")
        expires_at = datetime.fromtimestamp(int(validated["exp"]), tz=UTC)
        return StreamAuth(user_id=user_id, session_id=session_id, expires_at=expires_at)
    if ticket:
        redeemed = stream_ticket_redeem(ticket=ticket)
        if redeemed is None:
            raise _not_authenticated(
                "This stream ticket was already used or has expired.", "ticket_invalid"
            )
        session_id = str(redeemed.session_id) if redeemed.session_id else None
        if redeemed.access_expires_at <= timezone.now() or not _session_on(
            user_id=redeemed.user_id, session_id=session_id
        ):
            raise _not_authenticated("This session has ended.", "authentication_failed")
        return StreamAuth(
            user_id=redeemed.user_id,
            session_id=session_id,
            expires_at=redeemed.access_expires_at,
        )
    raise _not_authenticated("You are not signed in.")


# --- The per-process hub ----------------------------------------------------------------


class Hub:
    """The wake-ups of one event loop's connections, by user, and the checks of their
    sessions: one query for all of them every NOTIFICATIONS_SESSION_CHECK_SECONDS (a
    query per connection would be 100 a second for 1,000 connections)."""

    def __init__(self) -> None:
        self.listeners: dict[int, set[asyncio.Event]] = {}
        # (user id, session id) of the connected streams -> how many; those found ended.
        self.sessions: dict[tuple[int, str | None], int] = {}
        self.ended: set[tuple[int, str | None]] = set()
        self.session_task: asyncio.Task[None] | None = None
        # Reads of a user's events in flight, by (user, after): the streams of one user
        # woken together share one (see events_after); numbered in the order they began.
        self.reads: dict[tuple[int, int], tuple[int, asyncio.Future[selectors.CatchUp]]] = {}
        self.reads_started = 0
        # reads_started when each user was last woken: a read numbered that or later
        # began after the wake-up, so it sees the events the wake-up is for.
        self.wake_floor: dict[int, int] = {}
        self.known: dict[int, int] = {}
        self.task: asyncio.Task[None] | None = None
        self.layer_task: asyncio.Task[None] | None = None
        self.layer = get_channel_layer()
        self.channel: str | None = None
        self.groups: set[int] = set()
        self.groups_renewed_at = time.monotonic()
        self.groups_lock = asyncio.Lock()
        self.pending: set[asyncio.Task[None]] = set()

    def register(self, user_id: int, session_id: str | None = None) -> asyncio.Event:
        wake = asyncio.Event()
        self.listeners.setdefault(user_id, set()).add(wake)
        key = (user_id, session_id)
        self.sessions[key] = self.sessions.get(key, 0) + 1
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._poll())
        if self.session_task is None or self.session_task.done():
            self.session_task = asyncio.get_running_loop().create_task(self._check_sessions())
        if self.layer is not None:
            if self.layer_task is None or self.layer_task.done():
                self.layer_task = asyncio.get_running_loop().create_task(self._listen())
            elif user_id not in self.groups:
                # Join the user's group now, not at the next check: wake-ups sent before
                # that would wait for it.
                task = asyncio.get_running_loop().create_task(self._sync_groups_safely())
                self.pending.add(task)
                task.add_done_callback(self.pending.discard)
        return wake

    def unregister(self, user_id: int, wake: asyncio.Event, session_id: str | None = None) -> None:
        key = (user_id, session_id)
        if key in self.sessions:
            self.sessions[key] -= 1
            if self.sessions[key] <= 0:
                del self.sessions[key]
                self.ended.discard(key)
        waiting = self.listeners.get(user_id)
        if waiting is None:
            return
        waiting.discard(wake)
        if not waiting:
            del self.listeners[user_id]
            self.known.pop(user_id, None)
            self.wake_floor.pop(user_id, None)

    def _wake(self, user_id: int) -> None:
        self.wake_floor[user_id] = self.reads_started
        for wake in self.listeners.get(user_id, ()):
            wake.set()

    async def events_after(self, *, user_id: int, after: int, floor: int) -> selectors.CatchUp:
        """``selectors.events_after``, read once for all this process's streams that ask
        for the same (user, position) while it runs: the ten devices of a user woken by
        one event make one query, not ten. A stream joins only a read numbered ``floor``
        or later (``wake_floor`` of its user when it took its wake-up; ``reads_started``
        for its first read), which began after the wake-up and so sees every event it
        was woken for."""
        key = (user_id, after)
        running = self.reads.get(key)
        if running is None or running[0] < floor or running[1].done():
            future = asyncio.ensure_future(
                in_db_thread(selectors.events_after, user_id=user_id, after=after)
            )
            running = (self.reads_started, future)
            self.reads_started += 1
            self.reads[key] = running

            def forget(_: object, key: tuple[int, int] = key, mine: Any = running) -> None:
                if self.reads.get(key) is mine:
                    del self.reads[key]

            future.add_done_callback(forget)
        return await asyncio.shield(running[1])

    def session_ended(self, user_id: int, session_id: str | None) -> bool:
        """Whether the last check found this stream's session ended (revoked, idle, or
        its user deactivated)."""
        return (user_id, session_id) in self.ended

    async def _check_sessions(self) -> None:
        """Every NOTIFICATIONS_SESSION_CHECK_SECONDS: which of the connected streams'
        sessions are still on (notifications.selectors.stream_sessions_on, the rule of
        accounts.selectors.auth_session_is_on: read-only, so an open stream does not keep
        its session from idling out); the streams of one that ended are woken and close.
        Stops when nobody is connected."""
        while self.sessions:
            await asyncio.sleep(float(settings.NOTIFICATIONS_SESSION_CHECK_SECONDS))
            keys = list(self.sessions)
            try:
                on = await in_db_thread(selectors.stream_sessions_on, keys=keys)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a database hiccup: try again next time
                logger.warning("notification session check failed: %s", type(exc).__name__)
                continue
            for key in keys:
                if key not in on and key in self.sessions and key not in self.ended:
                    self.ended.add(key)
                    self._wake(key[0])

    async def _sync_groups(self) -> None:
        """Make this process's channel a member of exactly its connected users' groups."""
        if self.layer is None or self.channel is None:
            return
        async with self.groups_lock:
            wanted = set(self.listeners)
            renew = time.monotonic() - self.groups_renewed_at > GROUP_RENEW_SECONDS
            for user_id in wanted if renew else wanted - self.groups:
                await self.layer.group_add(wakeup.user_group(user_id=user_id), self.channel)
                self.groups.add(user_id)
            for user_id in self.groups - wanted:
                await self.layer.group_discard(wakeup.user_group(user_id=user_id), self.channel)
                self.groups.discard(user_id)
            if renew:
                self.groups_renewed_at = time.monotonic()

    async def _sync_groups_safely(self) -> None:
        try:
            await self._sync_groups()
        except Exception as exc:  # noqa: BLE001 - the database check still delivers
            logger.warning("notification wake-ups not joined: %s", type(exc).__name__)

    async def _listen(self) -> None:
        """Wake-ups from the channel layer (REDIS_URL), to this process's channel."""
        assert self.layer is not None
        while True:
            try:
                if self.channel is None:
                    self.channel = await self.layer.new_channel("notifications.")
                await self._sync_groups()
                message = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis down: the database check goes on
                logger.warning("notification wake-ups unavailable: %s", type(exc).__name__)
                await asyncio.sleep(settings.NOTIFICATIONS_POLL_SECONDS)
                continue
            user_id = message.get("user_id")
            if isinstance(user_id, int):
                self._wake(user_id)

    async def _poll(self) -> None:
        """Every NOTIFICATIONS_POLL_SECONDS: the newest event number of each connected
        user; a user whose number moved is woken. Stops when nobody is connected."""
        while self.listeners:
            try:
                await self._sync_groups()
                seqs = await in_db_thread(selectors.events_last_seqs, user_ids=list(self.listeners))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a database hiccup: try again next time
                logger.warning("notification check failed: %s", type(exc).__name__)
                seqs = {}
            for user_id, seq in seqs.items():
                # Also on the first sighting: an event may have committed between a new
                # connection's first read and this check.
                if self.known.get(user_id) != seq:
                    self.known[user_id] = seq
                    self._wake(user_id)
            await asyncio.sleep(settings.NOTIFICATIONS_POLL_SECONDS)
        # No await after the loop: a connection registering now must find this task done
        # (and start a new one). Group memberships left behind only bring wake-ups for
        # nobody, and go at the next check.


_hubs: dict[asyncio.AbstractEventLoop, Hub] = {}


def hub() -> Hub:
    """This event loop's hub (uvicorn: one loop per web process; tests: one per test)."""
    loop = asyncio.get_running_loop()
    for other in [other for other in _hubs if other.is_closed()]:
        del _hubs[other]
    if loop not in _hubs:
        _hubs[loop] = Hub()
    return _hubs[loop]


# --- One connection's stream ------------------------------------------------------------


# The last message of a stream that failed (both transports), before it ends.
STREAM_FAILED: dict[str, Any] = {
    "type": "error",
    "error": {
        "code": "stream_failed",
        "message": "The notification stream stopped because of a server error.",
        "hint": "Reconnect with your last event id; nothing is lost.",
    },
}


def ready_message(position: int) -> dict[str, Any]:
    return {"type": "ready", "id": position}


class Stream:
    """The messages of one connection: the backlog after ``after`` (None: from now), then
    live events, a heartbeat every NOTIFICATIONS_HEARTBEAT_SECONDS, and a final
    ``closed`` message when the session ends or the access token expires.

    Every message is a dict; those with an ``id`` that is an event number are events
    (``ready`` and ``reset`` carry the position too, so a client always knows where it is).
    """

    def __init__(self, *, auth: StreamAuth, transport: str = "websocket") -> None:
        self.auth = auth
        self.transport = transport
        self.opened_at = timezone.now()
        self.position: int | None = None
        self.repositioned = asyncio.Event()
        # Counts resume() calls: a database read that started before the latest resume
        # is stale, and its result must neither move the position nor be sent.
        self.resumes = 0

    def resume(self, after: int | None) -> None:
        """Send everything after ``after`` next (None: from now), starting with a ``ready``
        at that position. Wins over any read in flight when it is called."""
        self.position = after
        self.resumes += 1
        self.repositioned.set()

    async def messages(self, *, after: int | None) -> AsyncIterator[dict[str, Any]]:
        user_id = self.auth.user_id
        central = hub()
        wake = central.register(user_id, self.auth.session_id)
        try:
            self.position = after
            async for message in self._run(wake, central):
                yield message
        finally:
            central.unregister(user_id, wake, self.auth.session_id)

    async def _run(self, wake: asyncio.Event, central: Hub) -> AsyncIterator[dict[str, Any]]:
        """The loop behind ``messages``. ``self.position`` is the last id sent (or asked
        for by a resume); it is moved only by a read begun after the latest resume, so a
        resume that arrives while a read is in flight (``self.resumes`` changed) is kept:
        the read's result is dropped and the loop starts again from the resume."""
        user_id = self.auth.user_id
        heartbeat = float(settings.NOTIFICATIONS_HEARTBEAT_SECONDS)
        next_heartbeat = time.monotonic() + heartbeat
        owe_ready = True
        # Whether there may be events to read: not after a wait that timed out (a
        # heartbeat, the expiry) with no wake-up, as the hub wakes on every new event.
        need_read = True
        while True:
            wake.clear()
            if self.repositioned.is_set():
                self.repositioned.clear()
                owe_ready = True
                need_read = True
            # The first read after (re)positioning is this stream's own; a woken one may
            # share a read begun since the wake-up.
            floor = (
                central.reads_started
                if owe_ready
                else central.wake_floor.get(user_id, central.reads_started)
            )
            resumes = self.resumes
            if self.position is None:
                last = await in_db_thread(selectors.event_last_seq, user_id=user_id)
                if resumes != self.resumes:
                    continue
                self.position = last
            if owe_ready:
                owe_ready = False
                yield ready_message(self.position)
                if resumes != self.resumes:
                    continue
            after = self.position
            if need_read:
                batch = await central.events_after(user_id=user_id, after=after, floor=floor)
                if resumes != self.resumes:
                    continue
            else:
                batch = selectors.CatchUp(position=after)
            if batch.reset:
                self.position = batch.position
                yield {
                    "type": "reset",
                    "id": batch.position,
                    "reason": "Events since your last connection are no longer kept: "
                    "reload the uploads, reports and notifications.",
                }
                if resumes != self.resumes:
                    continue
            resumed = False
            for event in batch.events:
                # Moved before the send: a resume during the send then overrides it.
                self.position = int(event["id"])
                yield event
                metrics.event_delivered(
                    event=event, stream_opened_at=self.opened_at, transport=self.transport
                )
                next_heartbeat = time.monotonic() + heartbeat
                if resumes != self.resumes:
                    resumed = True
                    break
            if resumed or batch.more:
                continue
            if timezone.now() >= self.auth.expires_at:
                yield {"type": "closed", "reason": "token_expired"}
                return
            if central.session_ended(user_id, self.auth.session_id):
                yield {"type": "closed", "reason": "session_ended"}
                return
            if time.monotonic() >= next_heartbeat:
                yield {"type": "heartbeat"}
                next_heartbeat = time.monotonic() + heartbeat
            if self.repositioned.is_set():
                continue
            until_expiry = (self.auth.expires_at - timezone.now()).total_seconds()
            timeout = max(0.0, next_heartbeat - time.monotonic())
            timeout = min(timeout, max(0.0, until_expiry))
            waits = {
                asyncio.ensure_future(wake.wait()),
                asyncio.ensure_future(self.repositioned.wait()),
            }
            try:
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
            need_read = wake.is_set() or self.repositioned.is_set()


# An event number fits a bigint: at most 19 digits.
POSITION_MAX_DIGITS = 19


def parse_position(value: str | None) -> int | None:
    """A Last-Event-ID (or ``after``) value: a non-negative integer of ASCII digits, else
    None (from now). "²" passes str.isdigit() but not int(); a 5,000-digit one passes both
    checks but not Python's int-string limit: neither may fail a request."""
    text = "" if value is None else str(value).strip()
    if not text or len(text) > POSITION_MAX_DIGITS or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


# --- Server-Sent Events framing (the SSE view and the lean endpoint, sse_endpoint.py) ----

# EventSource waits this long before reconnecting on its own (the stream's `retry:`).
SSE_RETRY_MILLISECONDS = 3000
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
# Besides the content type, on every stream (both ways of serving it).
SSE_HEADERS: dict[str, str] = {
    "Cache-Control": "no-cache, no-store",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
}


def sse_message(message: dict[str, Any]) -> bytes:
    """One SSE message: ``id:`` (event number; not on heartbeats) and one ``data:`` line."""
    data = json.dumps(message, separators=(",", ":"))
    if message.get("type") == "heartbeat" or "id" not in message:
        return f"data: {data}\n\n".encode()
    return f"id: {message['id']}\ndata: {data}\n\n".encode()


async def sse_body(*, auth: StreamAuth, after: int | None) -> AsyncGenerator[bytes, None]:
    """The bytes of an SSE stream: ``retry:``, then each message of ``Stream.messages``;
    a failure ends it with STREAM_FAILED (the client reconnects with its last id)."""
    stream = Stream(auth=auth, transport="sse")
    yield f"retry: {SSE_RETRY_MILLISECONDS}\n\n".encode()
    try:
        async for message in stream.messages(after=after):
            yield sse_message(message)
    except Exception as exc:  # noqa: BLE001 - end the response: the client reconnects
        logger.warning(
            "notification stream of user %s failed: %s", auth.user_id, type(exc).__name__
        )
        yield sse_message(STREAM_FAILED)


async def sse_open(
    *, authorization: str, ticket: str, last_event_id: str | None
) -> AsyncGenerator[bytes, None]:
    """Authenticate an SSE stream (``stream_authenticate``, in the streams' threads) and
    give its body, resuming after ``last_event_id`` (the Last-Event-ID header, else the
    ``last_event_id`` parameter; None or not a number: from now). Raises ApplicationError
    (401) before anything is sent."""
    after = parse_position(last_event_id)  # before the ticket is spent
    auth = await in_db_thread(stream_authenticate, authorization=authorization, ticket=ticket)
    return sse_body(auth=auth, after=after)


__all__ = [
    "Hub",
    "Stream",
    "StreamAuth",
    "hub",
    "in_db_thread",
    "parse_position",
    "sse_body",
    "sse_message",
    "sse_open",
    "stream_authenticate",
]
