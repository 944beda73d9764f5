"""Report events in the audit trail, through accounts' one audit writer."""

from __future__ import annotations

from typing import Any

from accounts.models import User
from accounts.services.audit import AUDIT_VOCABULARY, audit_record

# DICOM "Patient Record" (PS3.15 A.5.3, DCM 110110) is the event for creating, changing and
# reading a report; our action says which.
REPORT_AUDIT_VOCABULARY: dict[str, tuple[str, str]] = {
    "report_changed": ("110110 Patient Record", ""),
    "report_accessed": ("110110 Patient Record", ""),
}


def register_audit_actions() -> None:
    """Make the report actions known to the audit writer and to its export filter.

    Called once from ReportsConfig.ready, before any URL module (and so the export's list
    of actions) is loaded. Idempotent.
    """
    for action, codes in REPORT_AUDIT_VOCABULARY.items():
        AUDIT_VOCABULARY.setdefault(action, codes)


def report_audit(
    *,
    action: str,
    report_id: int,
    facility_id: int | None,
    actor: User | None,
    detail: dict[str, Any],
) -> None:
    """One audit row for a report, filed under the report's facility.

    ``detail`` holds ids, states, version numbers and digests only, never report text.
    """
    audit_record(
        action=action,
        user=actor,
        username="" if actor is not None else "relaypacs",
        facility_id=facility_id,
        object_type="report",
        object_id=str(report_id),
        detail=detail,
    )
