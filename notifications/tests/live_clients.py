"""Real clients of the stream for end-to-end tests and the benchmark: a WebSocket
(``websockets``) and an SSE reader (``requests`` streaming), each knowing which web
process serves it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import psutil
import requests
from websockets.sync.client import ClientConnection, connect


def serving_pid(root_pid: int, local_port: int) -> int | None:
    """The process under ``root_pid`` (``serve``) holding the server side of the TCP
    connection whose client port is ``local_port``: which uvicorn worker serves it."""
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.raddr and conn.raddr.port == local_port and conn.status == "ESTABLISHED":
                    return proc.pid
        except psutil.Error:
            continue
    return None


class WsClient:
    def __init__(self, base: str, *, access: str | None = None, ticket: str | None = None) -> None:
        url = base.replace("http://", "ws://") + "/ws/notifications"
        headers = {"Authorization": f"Bearer {access}"} if access else None
        if ticket:
            url += f"?ticket={ticket}"
        self.ws: ClientConnection = connect(
            url, additional_headers=headers, open_timeout=30, legacy=True
        )

    @property
    def local_port(self) -> int:
        return int(self.ws.socket.getsockname()[1])

    def resume(self, after: int | None) -> dict[str, Any]:
        self.ws.send(json.dumps({"type": "resume", "after": after}))
        return self.next()

    def next(self, timeout: float = 30, skip: tuple[str, ...] = ("heartbeat",)) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            if message["type"] not in skip:
                return dict(message)

    def others_within(self, seconds: float) -> list[dict[str, Any]]:
        """Every message but heartbeats that arrives within ``seconds``."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = json.loads(self.ws.recv(timeout=left))
            except TimeoutError:
                break
            if message["type"] != "heartbeat":
                out.append(message)
        return out

    def close(self) -> None:
        self.ws.close()


class SseClient:
    def __init__(
        self,
        base: str,
        *,
        access: str | None = None,
        ticket: str | None = None,
        last_event_id: int | None = None,
    ) -> None:
        headers = {"Accept": "text/event-stream"}
        if access:
            headers["Authorization"] = f"Bearer {access}"
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        params = {"ticket": ticket} if ticket else None
        self.response = requests.get(
            f"{base}/api/v1/notifications/stream",
            headers=headers,
            params=params,
            stream=True,
            timeout=(30, 60),
        )
        self.status_code = self.response.status_code
        self._lines: Iterator[str] | None = None

    @property
    def local_port(self) -> int:
        return int(self.response.raw._connection.sock.getsockname()[1])

    def messages(self) -> Iterator[tuple[int | None, dict[str, Any]]]:
        """(``id:`` value, data) of each message; heartbeats included."""
        if self._lines is None:
            self._lines = self.response.iter_lines(decode_unicode=True)
        event_id: int | None = None
        for line in self._lines:
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                yield event_id, json.loads(line[6:])
                event_id = None

    def next(self, skip: tuple[str, ...] = ("heartbeat",)) -> dict[str, Any]:
        for event_id, message in self.messages():
            if message["type"] in skip:
                continue
            if "id" in message:
                assert event_id == message["id"], (event_id, message)
            return message
        raise EOFError("the stream ended")

    def others_within(self, seconds: float) -> list[dict[str, Any]]:
        """Every message but heartbeats that arrives within ``seconds`` (then the stream
        is no longer usable: its socket timed out)."""
        self.response.raw._connection.sock.settimeout(seconds)
        out: list[dict[str, Any]] = []
        try:
            for _, message in self.messages():
                if message["type"] != "heartbeat":
                    out.append(message)
        except (requests.exceptions.ConnectionError, TimeoutError, OSError):
            pass
        return out

    def close(self) -> None:
        self.response.close()
