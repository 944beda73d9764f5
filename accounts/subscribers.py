"""The audit trail's view of the upload pipeline: domain events become DICOM audit events.

Connected in AccountsConfig.ready. Payloads carry ids, codes and counts only.
"""

from __future__ import annotations

from typing import Any

from relaypacs import events

from .models import AuditOutcome, User
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
_DETAIL_KEYS = ("code", "destination", "instances")


def audit_domain_event(sender: Any, name: str = "", **payload: Any) -> None:
    audited = _AUDITED.get(name)
    if audited is None:
        return
    action, outcome, phase = audited
    owner_id = payload.get("owner_id")
    user = User.objects.filter(pk=owner_id).first() if owner_id is not None else None
    detail = {"event": name, "phase": phase}
    detail.update({k: payload[k] for k in _DETAIL_KEYS if k in payload})
    audit_record(
        action=action,
        user=user,
        outcome=outcome,
        object_type="upload",
        object_id=str(payload.get("upload_id", "")),
        detail=detail,
    )
