"""The WebSocket transport of the stream: ``/ws/notifications``.

Auth as the SSE view: ``Authorization: Bearer`` on the handshake, or ``?ticket=``. A
refused connection is accepted, told why (``{"type": "error", "error": {...}}``) and
closed with code 4401, since browsers cannot read a refused handshake's status.

The client's first message says where to start, ``{"type": "resume", "after": <id>}``
(``after`` null: from now); a client that says nothing within RESUME_GRACE_SECONDS gets
the stream from now. Nothing is sent before that, so the backlog and live events arrive
once and in order. A later ``resume`` restarts from its ``after`` (even one that arrives
while the stream is reading the database). A stream that fails is not left open and
silent: ``{"type": "error", "error": {"code": "stream_failed", ...}}``, then close 1011.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncWebsocketConsumer

from relaypacs.errors import ApplicationError

from . import live

logger = logging.getLogger(__name__)

# How long a new connection waits for the client's `resume` before streaming from now.
RESUME_GRACE_SECONDS = 2.0
# Close codes (4000-4999 are the application's): sign in (or ask for a ticket) again.
CLOSE_AUTH = 4401
# The server failed (RFC 6455 "internal error"): reconnect with the last id.
CLOSE_SERVER_ERROR = 1011


class NotificationsConsumer(AsyncWebsocketConsumer):
    # The hub shares one channel per process; consumers need no channel of their own
    # (an alias that does not exist makes Channels give them none).
    channel_layer_alias = "notifications-consumers-have-no-channel"

    stream: live.Stream | None = None
    pump: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        headers = dict(self.scope.get("headers") or [])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        query = parse_qs((self.scope.get("query_string") or b"").decode("latin-1"))
        ticket = (query.get("ticket") or [""])[0]
        await self.accept()
        try:
            auth = await live.in_db_thread(
                live.stream_authenticate, authorization=authorization, ticket=ticket
            )
        except ApplicationError as exc:
            await self._send({"type": "error", "error": exc.as_dict()})
            await self.close(code=CLOSE_AUTH)
            return
        self.stream = live.Stream(auth=auth)
        self.started = asyncio.Event()
        self.after: int | None = None
        self.pump = asyncio.get_running_loop().create_task(self._pump())

    async def _send(self, message: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(message, separators=(",", ":")))

    async def _pump(self) -> None:
        """Send the stream's messages. A stream that fails (the database went away, a
        bug) is not left open and silent: the client is told, and the socket closed with
        1011, so it reconnects with its last id (nothing is lost: the database is the
        truth)."""
        assert self.stream is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.started.wait(), RESUME_GRACE_SECONDS)
        self.started.set()
        try:
            async for message in self.stream.messages(after=self.after):
                await self._send(message)
                if message["type"] == "closed":
                    await self.close(code=CLOSE_AUTH)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever broke, the client must reconnect
            # The kind of error only: driver messages can carry values.
            logger.warning(
                "notification stream of user %s failed: %s",
                self.stream.auth.user_id,
                type(exc).__name__,
            )
            with contextlib.suppress(Exception):
                await self._send(live.STREAM_FAILED)
                await self.close(code=CLOSE_SERVER_ERROR)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.stream is None:
            return
        try:
            message = json.loads(text_data or "")
        except ValueError:
            message = None
        if not isinstance(message, dict) or message.get("type") != "resume":
            await self._send(
                {
                    "type": "error",
                    "error": {
                        "code": "invalid_message",
                        "message": "The stream understands only resume messages.",
                        "hint": 'Send {"type": "resume", "after": <last event id or null>}.',
                    },
                }
            )
            return
        raw = message.get("after")
        after = live.parse_position(None if raw is None else str(raw))
        if not self.started.is_set():
            self.after = after
            self.started.set()
        else:
            self.stream.resume(after)

    async def disconnect(self, code: int) -> None:
        if self.pump is not None:
            self.pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.pump
