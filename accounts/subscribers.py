"""The audit trail's view of the upload pipeline: domain events become DICOM audit events.

Connected in AccountsConfig.ready. Payloads carry ids, codes and counts only.

Each event is recorded with the person it concerns (``user``: ``actor_id`` when the event
names who acted, else the upload's owner ``owner_id``) and the upload as its object.
Events that do not carry ``owner_id`` get it from the upload's earlier audit events (the
``upload.started`` event carries it), so the trail never needs to read the uploads app.
"""

from __future__ import annotations

from typing import Any

from relaypacs import events

from .models import AuditEvent, AuditOutcome, User
from .services.audit import audit_record

# event name -> (audit action, outcome, phase)
_AUDITED = {
    events.UPLOAD_STARTED: ("data_import", AuditOutcome.SUCCESS, "started"),
    events.UPLOAD_RECEIVED: ("data_import", AuditOutcome.SUCCESS, "received"),
    events.UPLOAD_CANCELLED: ("data_import", AuditOutcome.MINOR_FAILURE, "cancelled"),
    events.UPLOAD_FAILED: ("data_import", AuditOutcome.SERIOUS_FAILURE, "failed"),
    events.PACS_RECEIPT: ("instances_transferred", AuditOutcome.SUCCESS, "acknowledged"),
    events.UPLOAD_COMPLETED: ("instances_transferred", AuditOutcome.SUCCESS, "confirmed"),
}
_UPLOAD_ACTIONS = ("data_import", "instances_transferred")
# Ids and codes copied into the event's detail when the payload has them.
_DETAIL_KEYS = (
    "code",
    "destination",
    "destination_id",
    "instances",
    "study_instance_uid",
    "series_count",
)


def _as_user_id(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _owner_from_trail(upload_id: str) -> int | None:
    """The owner recorded by an earlier event of the same upload, if any."""
    if not upload_id:
        return None
    return (
        AuditEvent.objects.filter(
            object_type="upload",
            object_id=upload_id,
            action__in=_UPLOAD_ACTIONS,
            detail__owner_id__isnull=False,
        )
        .order_by("occurred_at", "id")
        .values_list("detail__owner_id", flat=True)
        .first()
    )


def audit_domain_event(sender: Any, name: str = "", **payload: Any) -> None:
    audited = _AUDITED.get(name)
    if audited is None:
        return
    action, outcome, phase = audited
    upload_id = str(payload.get("upload_id") or "")
    owner_id = _as_user_id(payload.get("owner_id"))
    owner_source = "event"
    if owner_id is None:
        owner_id = _as_user_id(_owner_from_trail(upload_id))
        owner_source = "audit_trail" if owner_id is not None else "unknown"
    actor_id = _as_user_id(payload.get("actor_id")) or owner_id
    user = User.objects.filter(pk=actor_id).first() if actor_id is not None else None
    detail: dict[str, Any] = {"event": name, "phase": phase}
    if owner_id is not None:
        detail["owner_id"] = owner_id
    if owner_source != "event":
        detail["owner_from"] = owner_source
    if actor_id is not None and actor_id != owner_id:
        detail["actor_id"] = actor_id
    detail.update({k: payload[k] for k in _DETAIL_KEYS if k in payload})
    audit_record(
        action=action,
        user=user,
        outcome=outcome,
        object_type="upload",
        object_id=upload_id,
        detail=detail,
    )
