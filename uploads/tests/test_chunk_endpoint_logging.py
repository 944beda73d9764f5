"""The lean chunk endpoint gives each chunk request an id, as Django's requests get one: it is
answered in X-Request-ID and carried, with the upload id, into the endpoint's thread, so the
JSON log lines written there and the Celery tasks published from there carry both."""

from __future__ import annotations

import io
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db.backends.signals import connection_created

from relaypacs.celery import app as celery_app
from relaypacs.logging_context import TASK_HEADER, ContextFilter, JsonFormatter
from uploads.tests.helpers import content_md5
from uploads.tests.test_chunk_endpoint import CHUNK, SIZE, asgi_put, init, signed_in
from uploads.tests.test_chunk_endpoint import uploader as uploader  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db(transaction=True)


class ChunkThread:
    """Django's ``connection_created`` fires in the endpoint's thread when chunk_receive
    opens its database connection (the test settings close it after every request): there
    this logs one JSON line and publishes one task, as code under chunk_receive would."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.lines = io.StringIO()
        self.threads: list[str] = []
        self.handler = logging.StreamHandler(self.lines)
        self.handler.setFormatter(JsonFormatter())
        self.handler.addFilter(ContextFilter())
        self.logger = logging.getLogger("uploads.tests.chunk_thread")

    def __call__(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        self.threads.append(threading.current_thread().name)
        self.logger.warning("the chunk thread opened a database connection")
        celery_app.send_task("uploads.tests.not_a_task", queue=self.queue)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines.getvalue().splitlines()]

    def published_headers(self) -> dict[str, Any]:
        with celery_app.connection_for_read() as connection:
            queue = connection.SimpleQueue(self.queue)
            try:
                message = queue.get(timeout=10)
                message.ack()
                return dict(message.headers)
            finally:
                queue.close()


@pytest.fixture
def chunk_thread() -> Iterator[ChunkThread]:
    watcher = ChunkThread(queue=f"chunk-logging-test-{uuid.uuid4().hex}")
    watcher.logger.addHandler(watcher.handler)
    connection_created.connect(watcher, weak=False)
    try:
        yield watcher
    finally:
        connection_created.disconnect(watcher)
        watcher.logger.removeHandler(watcher.handler)


def test_the_last_chunks_thread_logs_and_publishes_with_the_request_id(
    uploader: Any, chunk_thread: ChunkThread
) -> None:
    upload = init(signed_in(uploader))
    upload_id = upload["upload_id"]
    last = SIZE // CHUNK  # the upload's last chunk, the short one
    data = b"\x01" * (SIZE - last * CHUNK)
    status, headers, body = asgi_put(
        f"/api/v1/upload/{upload_id}/chunk?index={last}",
        data,
        {"Authorization": f"Bearer {upload['upload_token']}", "Content-MD5": content_md5(data)},
    )
    assert status == 200, body
    request_id = headers["x-request-id"]
    assert len(request_id) == 32, headers
    assert chunk_thread.threads and all(t.startswith("chunk") for t in chunk_thread.threads)
    records = chunk_thread.records()
    assert records, "nothing was logged in the chunk thread"
    for record in records:
        assert record["request_id"] == request_id, record
        assert record["upload_id"] == upload_id, record
    assert chunk_thread.published_headers()[TASK_HEADER] == request_id


def test_a_clients_request_id_is_kept_and_a_bogus_one_replaced(
    uploader: Any, chunk_thread: ChunkThread
) -> None:
    upload = init(signed_in(uploader))
    path = f"/api/v1/upload/{upload['upload_id']}/chunk?index=0"
    data = b"\x02" * CHUNK
    sent = {"Authorization": f"Bearer {upload['upload_token']}", "Content-MD5": content_md5(data)}
    status, headers, _ = asgi_put(path, data, {**sent, "X-Request-ID": "proxy-id-1234abcd"})
    assert status == 200 and headers["x-request-id"] == "proxy-id-1234abcd"
    assert chunk_thread.records()[-1]["request_id"] == "proxy-id-1234abcd"
    status, headers, _ = asgi_put(path, data, {**sent, "X-Request-ID": "not an id\nforged"})
    assert status == 200 and headers["x-request-id"] not in ("", "not an id\nforged")
    # A refusal (before the body is read, no thread) answers its id too.
    status, headers, _ = asgi_put(path, data, {**sent, "Authorization": "Bearer upl_wrong"})
    assert status == 401 and len(headers["x-request-id"]) == 32
