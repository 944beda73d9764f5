"""The notifications app's view of the domain events; connected in NotificationsConfig.ready.

Runs in the process that emitted the event (a Celery worker, a web process), after its
transaction committed.
"""

from __future__ import annotations

from typing import Any

from relaypacs import events

from .deliveries import (
    REPORT_EVENTS,
    UPLOAD_EVENT_STATES,
    report_event_deliver,
    upload_event_deliver,
)
from .push import push_subscription_delete


def notifications_on_domain_event(sender: Any, name: str = "", **payload: Any) -> None:
    """Upload and report events: onto the streams of the users they concern. A session's
    end: its device's push subscription is deleted."""
    if name == events.ACCOUNT_SESSION_REVOKED and payload.get("session_id"):
        push_subscription_delete(session_id=str(payload["session_id"]))
    elif name in UPLOAD_EVENT_STATES and payload.get("upload_id"):
        upload_event_deliver(name=name, upload_id=str(payload["upload_id"]))
    elif name in REPORT_EVENTS and payload.get("report_id") is not None:
        report_event_deliver(name=name, report_id=int(payload["report_id"]), payload=payload)
