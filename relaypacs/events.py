"""Domain events, emitted by services in one place.

Services call ``emit`` after their transaction commits; reports, notifications and
analytics subscribe with ``subscribe`` (or ``domain_event.connect``) and nothing imports
them back. Payloads carry ids and counts, never patient data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger(__name__)

domain_event = Signal()

UPLOAD_STARTED = "upload.started"
UPLOAD_RECEIVED = "upload.received"  # every chunk is in, processing starts
UPLOAD_NEEDS_CONFIRMATION = "upload.needs_confirmation"
UPLOAD_FORWARDING = "upload.forwarding"  # checked (or confirmed, retried): sending to the PACS
UPLOAD_WAITING_FOR_PACS = "upload.waiting_for_pacs"  # the PACS failed; a retry is scheduled
UPLOAD_COMPLETED = "upload.completed"  # the PACS confirmed every instance
UPLOAD_FAILED = "upload.failed"
UPLOAD_CANCELLED = "upload.cancelled"
PACS_RECEIPT = "pacs.receipt"  # a PACS acknowledged (part of) an upload
PACS_UNREACHABLE = "pacs.unreachable"
REPORT_ASSIGNED = "report.assigned"  # on a worklist (a radiologist's or the pool)
REPORT_PENDING = "report.pending"  # being read, or a preliminary result exists
REPORT_READY = "report.ready"  # final, signed, and its PDF is stored
REPORT_ADDITIONAL_DATA_REQUIRED = "report.additional_data_required"
REPORT_AMENDED = "report.amended"  # a new signed version superseded the earlier one
REPORT_CANCELLED = "report.cancelled"
# The sender answered the radiologist's question after new images had already returned the
# report to pending: no status change, so the assignee learns of the answer from this.
REPORT_ANSWERED = "report.answered"
# A signed-in device's session ended (sign-out, "sign out other devices", an administrator,
# a password change, theft detection, idleness): ``session_id``, ``user_id``.
ACCOUNT_SESSION_REVOKED = "account.session_revoked"


def emit(name: str, **payload: Any) -> None:
    """Send a domain event to every subscriber; a failing subscriber never breaks the sender."""
    logger.info("event %s %s", name, {k: v for k, v in payload.items() if k.endswith("id")})
    for receiver, error in domain_event.send_robust(sender=name, name=name, **payload):
        if isinstance(error, Exception):
            # The kind of error only: driver and pydicom messages can carry values.
            logger.error("subscriber %r failed on %s: %s", receiver, name, type(error).__name__)


def subscribe(handler: Callable[..., Any]) -> None:
    domain_event.connect(handler, weak=False)
