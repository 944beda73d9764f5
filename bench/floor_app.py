"""The least a chunk PUT has to do, as a bare ASGI app: the floor for Python on this machine.

Per chunk it does what RelayPACS's chunk endpoint must do and nothing else: check the
bearer token and Content-MD5, write the body at its offset with fdatasync, and record
the chunk in SQLite (WAL) in one statement. No framework, no middleware. Benchmark only:
``uvicorn bench.floor_app:app`` with ``FLOOR_DIR`` set; the bearer token is ``floor``.
It answers ``PUT /api/v1/upload/<id>/chunk?index=N`` like RelayPACS does.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

CHUNK_SIZE = 1024 * 1024  # the benchmark's chunk size (fixed here: a floor, not a product)
TOKEN = b"Bearer floor"
_local = threading.local()


def _directory() -> Path:
    """Where the floor app keeps its files (FLOOR_DIR)."""
    return Path(os.environ["FLOOR_DIR"])


def _database() -> sqlite3.Connection:
    """One connection per executor thread, kept open (no connect per request)."""
    if not hasattr(_local, "db"):
        db = sqlite3.connect(_directory() / "floor.sqlite3", timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS chunk (upload TEXT, idx INTEGER, md5 TEXT, PRIMARY KEY (upload, idx))"
        )
        _local.db = db
    return _local.db


def _store(upload: str, index: int, body: bytes, md5: bytes) -> bool:
    """Verify, write and record one chunk; False when the MD5 does not match."""
    if hashlib.md5(body).digest() != md5:  # the protocol's checksum
        return False
    fd = os.open(_directory() / f"{upload}.bin", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, body, index * CHUNK_SIZE)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    _database().execute("INSERT OR IGNORE INTO chunk VALUES (?, ?, ?)", (upload, index, md5.hex()))
    return True


async def _answer(send: Any, status: int, payload: dict[str, Any]) -> None:
    """A JSON response with ``status``."""
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI entry point (HTTP only; lifespan events are acknowledged)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    parts = scope["path"].strip("/").split("/")
    if scope["method"] != "PUT" or len(parts) != 5 or parts[-1] != "chunk":
        await _answer(send, 200 if scope["path"] == "/api/v1/health" else 404, {})
        return
    headers = dict(scope["headers"])
    if headers.get(b"authorization") != TOKEN:
        await _answer(send, 401, {})
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    index = int(parse_qs(scope["query_string"].decode())["index"][0])
    md5 = base64.b64decode(headers.get(b"content-md5", b""))
    stored = await asyncio.to_thread(_store, parts[3], index, body, md5)
    await _answer(send, 200 if stored else 422, {"index": index, "received": stored})
