"""The audit trail's view of the upload pipeline: domain events become DICOM audit events.

Connected in AccountsConfig.ready. Payloads carry ids, codes and counts only.

Each event is recorded with the person it concerns (``user``: ``actor_id`` when the event
names who acted, else the upload's owner ``owner_id``) and the upload as its object.
Events that do not carry ``owner_id`` get it from the upload's earlier audit events (the
``upload.started`` event carries it), so the trail never needs to read the uploads app.

Each is filed under the upload's facility (where it was made, ``facility_id`` of the
``upload.started`` event; later events take it from that first event), not under the
facility its owner or the actor belongs to today, so auditors of a clinic see the trail of
the clinic's uploads even after their owner moved.
"""

from __future__ import annotations

from typing import Any

from relaypacs import events

from .models import AuditOutcome, User
from .selectors import audit_upload_origin
from .services.audit import FACILITY_OF_USER, FacilityChoice, audit_record

# event name -> (audit action, outcome, phase)
_AUDITED = {
    events.UPLOAD_STARTED: ("data_import", AuditOutcome.SUCCESS, "started"),
    events.UPLOAD_RECEIVED: ("data_import", AuditOutcome.SUCCESS, "received"),
    events.UPLOAD_CANCELLED: ("data_import", AuditOutcome.MINOR_FAILURE, "cancelled"),
    events.UPLOAD_FAILED: ("data_import", AuditOutcome.SERIOUS_FAILURE, "failed"),
    events.PACS_RECEIPT: ("instances_transferred", AuditOutcome.SUCCESS, "acknowledged"),
    events.UPLOAD_COMPLETED: ("instances_transferred", AuditOutcome.SUCCESS, "confirmed"),
}
# Ids and codes copied into the event's detail when the payload has them.
_DETAIL_KEYS = (
    "code",
    "destination",
    "destination_id",
    "instances",
    "relay_added_instances",
    "study_instance_uid",
    "series_count",
)


def _as_id(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def audit_domain_event(sender: Any, name: str = "", **payload: Any) -> None:
    audited = _AUDITED.get(name)
    if audited is None:
        return
    action, outcome, phase = audited
    upload_id = str(payload.get("upload_id") or "")
    owner_id = _as_id(payload.get("owner_id"))
    first = (
        None
        if owner_id is not None and "facility_id" in payload
        else audit_upload_origin(upload_id=upload_id)
    )
    owner_source = "event"
    if owner_id is None:
        owner_id = first.owner_id if first is not None else None
        owner_source = "audit_trail" if owner_id is not None else "unknown"
    if "facility_id" in payload:
        facility_id: FacilityChoice = _as_id(payload["facility_id"])
    else:
        facility_id = first.facility_id if first is not None else FACILITY_OF_USER
    actor_id = _as_id(payload.get("actor_id")) or owner_id
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
        facility_id=facility_id,
        object_type="upload",
        object_id=upload_id,
        detail=detail,
    )
