"""Queueing pipeline work after the transaction that made it possible commits."""

from __future__ import annotations

import logging
import uuid

from celery import current_app
from django.db import transaction

logger = logging.getLogger(__name__)

PROCESS_TASK = "uploads.tasks.upload_process_task"
FORWARD_TASK = "uploads.tasks.upload_forward_task"


def dispatch_on_commit(*, task_name: str, upload_id: uuid.UUID) -> None:
    """Send the task by name once the current transaction commits.

    A failed send is logged, not raised: the upload's state is already committed and
    beat re-dispatches it, so a broker hiccup never fails the client's request. One retry,
    not Celery's default three: against a Redis that went silent each retry waits on
    reconnecting (REDIS_SOCKET_TIMEOUT_SECONDS), and a request (complete) waited 5 times
    the timeout with three, 3 times with one (uploads/tests/test_broker_unanswered.py).
    """

    def send() -> None:
        try:
            current_app.send_task(task_name, args=[str(upload_id)], retry_policy={"max_retries": 1})
        except Exception:
            logger.exception(
                "could not queue %s for upload %s; beat will retry", task_name, upload_id
            )

    transaction.on_commit(send)
