"""Waking the web processes after an event commits (the producer's side).

With ``REDIS_URL`` set, a message to the user's channels-redis group reaches every web
process with a connection of that user at once. The message carries the user id only:
the reader fetches what is new from the database, the truth; a message the channel layer
drops (it drops silently when a channel is full) delays delivery until the process's
next database check (``NOTIFICATIONS_POLL_SECONDS``), it never loses an event.

Without Redis (the embedded default) there is nothing to send: each web process checks
the database for its connected users every ``NOTIFICATIONS_POLL_SECONDS`` (live.Hub). The
in-memory channel layer is per process and is never used.
"""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)


def user_group(*, user_id: int) -> str:
    """The channel layer group of a user's connections (one member per web process)."""
    return f"notifications.user.{user_id}"


def wake_user(*, user_id: int) -> None:
    """Wake the processes holding ``user_id``'s connections. Never raises: a lost wake-up
    only waits for the next database check."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(
            user_group(user_id=user_id), {"type": "notifications.wake", "user_id": user_id}
        )
    except Exception as exc:  # noqa: BLE001 - Redis down: the database check delivers
        logger.warning("notification wake-up not sent: %s", type(exc).__name__)
