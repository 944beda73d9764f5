"""Reading what this test process puts on the real Celery broker (Redis).

``private_queue()`` sends this process's task messages to a queue of their own that no
worker consumes, so a test can read every message it caused, and no running worker
(the session's ``celery_worker``) picks its uploads up behind its back.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from celery import current_app
from django.conf import settings


@dataclass(frozen=True)
class QueuedTask:
    name: str
    args: list[object]


@dataclass
class PrivateQueue:
    name: str
    client: redis.Redis

    def tasks(self) -> list[QueuedTask]:
        """Every message on the queue, oldest first (they stay there)."""
        found = []
        # kombu's Redis transport LPUSHes: the list holds the newest first.
        for raw in reversed(self.client.lrange(self.name, 0, -1)):
            message = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            found.append(QueuedTask(message["headers"]["task"], args))
        return found

    def for_upload(self, upload_id: object) -> list[str]:
        """Names of the tasks queued for this upload, oldest first."""
        return [task.name for task in self.tasks() if task.args == [str(upload_id)]]


@contextmanager
def private_queue() -> Iterator[PrivateQueue]:
    app = current_app
    before = app.conf.task_default_queue
    queue = PrivateQueue(
        name=f"test-{uuid.uuid4().hex}", client=redis.Redis.from_url(settings.CELERY_BROKER_URL)
    )
    app.conf.task_default_queue = queue.name
    try:
        yield queue
    finally:
        app.conf.task_default_queue = before
        for key in queue.client.keys(f"*{queue.name}*"):
            queue.client.delete(key)
        queue.client.close()
