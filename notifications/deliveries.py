"""Domain events turned into stream events and notifications: who hears what.

- Upload events go to the upload's owner. ``upload.completed``, ``upload.failed`` and
  ``upload.needs_confirmation`` also make a notification.
- Report events go to its senders (the report's sender and its uploads' owners) and its
  assignee. ``report.assigned`` makes a notification for the assignee, or, for a report
  in the reading pool, for every active radiologist who reads the facility (they also
  get the event); ``report.ready`` and ``report.additional_data_required`` make one for
  the senders (in fixed words: the radiologist's question is shown only in the app).
- ``report.pending`` with an assignee (a radiologist took the report): everyone else who
  was offered it from the reading pool gets ``report.claimed`` and their offer is marked
  read, so nobody keeps "New … study to report" for a report already taken.

Each recipient's event is appended in its own transaction (services.event_append); a
transient database error (``OperationalError``) is retried APPEND_ATTEMPTS times. Every
event says when its upload or report last changed and its state then (``updated_at``,
``current_state``), so a client can ignore an event older than what it shows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from django.db import OperationalError, connection, transaction

from relaypacs import events

from . import selectors, texts
from .models import NotificationKind
from .services import REPORT_CLAIMED, NotificationDraft, event_append, report_claimed_tell

logger = logging.getLogger(__name__)

# The state an upload event stands for; other upload events take the upload's own state.
UPLOAD_EVENT_STATES = {
    events.UPLOAD_STARTED: "receiving",
    events.UPLOAD_RECEIVED: "processing",
    events.UPLOAD_FORWARDING: "forwarding",
    events.UPLOAD_WAITING_FOR_PACS: "waiting_for_pacs",
    events.UPLOAD_NEEDS_CONFIRMATION: "needs_confirmation",
    events.UPLOAD_COMPLETED: "completed",
    events.UPLOAD_FAILED: "failed",
    events.UPLOAD_CANCELLED: "cancelled",
}
# A lock timeout, a dropped connection, a failover: tried this often, waiting
# APPEND_BACKOFF_SECONDS times the attempt between tries (well under a second in all,
# since this runs in the emitter's process after its commit).
APPEND_ATTEMPTS = 3
APPEND_BACKOFF_SECONDS = 0.2
REPORT_EVENTS = frozenset(
    {
        events.REPORT_ASSIGNED,
        events.REPORT_PENDING,
        events.REPORT_READY,
        events.REPORT_ADDITIONAL_DATA_REQUIRED,
        events.REPORT_AMENDED,
        events.REPORT_CANCELLED,
        events.REPORT_ANSWERED,
    }
)


def _retried(write: Callable[..., Any], *, what: str, **fields: Any) -> bool:
    """``write(**fields)`` (an event append), retried on a transient database error;
    returns whether it was written. Outside a transaction only (as after the emitter's
    commit): inside one, the error has broken it, so it is raised at once. After the last
    attempt the event is lost: logged with its ids (never patient data), and the other
    recipients' events are still tried."""
    for attempt in range(1, APPEND_ATTEMPTS + 1):
        try:
            write(**fields)
            return True
        except OperationalError as exc:
            ids = (what, fields.get("user_id"), fields.get("upload_id"), fields.get("report_id"))
            broken = transaction.get_connection().in_atomic_block
            if broken or attempt == APPEND_ATTEMPTS:
                logger.error(
                    "notification event %s for user %s lost (upload %s, report %s): %s",
                    *ids,
                    type(exc).__name__,
                )
                if broken:
                    raise
                return False
            logger.warning(
                "notification event %s for user %s not appended (upload %s, report %s; "
                "attempt %s of %s): %s",
                *ids,
                attempt,
                APPEND_ATTEMPTS,
                type(exc).__name__,
            )
            if connection.connection is not None and not connection.is_usable():
                connection.close()  # the next attempt reconnects
            time.sleep(APPEND_BACKOFF_SECONDS * attempt)
    return False


def _append(**fields: Any) -> bool:
    return _retried(event_append, what=str(fields.get("type")), **fields)


def _as_of(*, state: str, updated_at: Any) -> dict[str, Any]:
    return {
        "current_state": state,
        "updated_at": updated_at.isoformat() if updated_at is not None else None,
    }


def upload_event_deliver(*, name: str, upload_id: str) -> int:
    """Append ``name`` to the upload owner's stream (with its notification); returns the
    number of events appended (0: unknown upload or no owner)."""
    facts = selectors.upload_facts(upload_id=upload_id)
    if facts is None or facts.owner_id is None:
        return 0
    label = texts.study_label(
        modalities=facts.modalities, studies=facts.studies, sent_at=facts.created_at
    )
    draft: NotificationDraft | None = None
    if name == events.UPLOAD_COMPLETED:
        draft = NotificationDraft(
            NotificationKind.UPLOAD_COMPLETED,
            *texts.upload_completed(label=label, studies=facts.studies),
        )
    elif name == events.UPLOAD_FAILED:
        draft = NotificationDraft(
            NotificationKind.UPLOAD_FAILED,
            *texts.upload_failed(label=label, error_code=facts.error_code),
        )
    elif name == events.UPLOAD_NEEDS_CONFIRMATION:
        draft = NotificationDraft(
            NotificationKind.UPLOAD_NEEDS_ATTENTION,
            *texts.upload_needs_attention(label=label, studies=facts.studies),
        )
    appended = _append(
        user_id=facts.owner_id,
        type=name,
        upload_id=upload_id,
        state=UPLOAD_EVENT_STATES.get(name, facts.state),
        notification=draft,
        extra=_as_of(state=facts.state, updated_at=facts.updated_at),
    )
    return int(appended)


def report_event_deliver(*, name: str, report_id: int, payload: dict[str, Any]) -> int:
    """Append ``name`` to the streams of the report's senders and assignee (and, for a
    pooled ``report.assigned``, the reading pool; for ``report.pending`` with an assignee,
    ``report.claimed`` to the others offered it); returns the number of events appended."""
    facts = selectors.report_facts(report_id=report_id)
    if facts is None:
        return 0
    state = str(payload.get("status") or facts.status)
    raw_assignee = payload.get("assignee_id", facts.assignee_id)
    assignee_id = int(raw_assignee) if raw_assignee else None
    label = texts.study_label(
        modalities=[facts.modality] if facts.modality else [], studies=1, sent_at=facts.sent_at
    )
    drafts: dict[int, NotificationDraft | None] = dict.fromkeys(facts.senders)
    if assignee_id is not None:
        drafts.setdefault(assignee_id, None)
    if name == events.REPORT_ASSIGNED:
        pooled = assignee_id is None
        readers = (
            [assignee_id]
            if assignee_id is not None
            else selectors.reading_pool(facility_id=facts.facility_id)
        )
        title, body = texts.report_assigned(
            label=label, service_level=facts.service_level, pooled=pooled
        )
        for reader in readers:
            drafts[reader] = NotificationDraft(NotificationKind.REPORT_ASSIGNED, title, body)
    elif name == events.REPORT_READY:
        title, body = texts.report_ready(label=label)
        for sender in facts.senders:
            drafts[sender] = NotificationDraft(NotificationKind.REPORT_READY, title, body)
    elif name == events.REPORT_ADDITIONAL_DATA_REQUIRED:
        title, body = texts.report_question(label=label)
        for sender in facts.senders:
            drafts[sender] = NotificationDraft(
                NotificationKind.REPORT_ADDITIONAL_DATA_REQUIRED, title, body
            )
    elif name == events.REPORT_ANSWERED and assignee_id is not None:
        title, body = texts.report_answered(label=label)
        drafts[assignee_id] = NotificationDraft(NotificationKind.REPORT_ANSWERED, title, body)
    as_of = _as_of(state=facts.status, updated_at=facts.updated_at)
    appended = 0
    for user_id, draft in drafts.items():
        appended += _append(
            user_id=user_id,
            type=name,
            report_id=report_id,
            state=state,
            notification=draft,
            extra=as_of,
        )
    if name == events.REPORT_PENDING and assignee_id is not None:
        appended += report_claimed_deliver(
            report_id=report_id, assignee_id=assignee_id, as_of=as_of
        )
    return appended


def report_claimed_deliver(
    *, report_id: int, assignee_id: int, as_of: dict[str, Any] | None = None
) -> int:
    """Tell the others offered a pooled report that ``assignee_id`` took it
    (``services.report_claimed_tell``); returns how many were told. Safe to run twice:
    a radiologist is told once per offer."""
    told = 0
    for user_id in selectors.report_claim_recipients(report_id=report_id, assignee_id=assignee_id):
        told += _retried(
            report_claimed_tell,
            what=REPORT_CLAIMED,
            user_id=user_id,
            report_id=report_id,
            assignee_id=assignee_id,
            extra=as_of or {},
        )
    return told
