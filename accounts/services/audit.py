"""The audit trail: one function writes it, with DICOM audit vocabulary (PS3.15 A.5)."""

from __future__ import annotations

from enum import Enum
from typing import Any, Final, Literal

from ..clientinfo import ClientInfo
from ..models import AuditEvent, AuditOutcome, User

# Our action code -> (DICOM Event ID, DICOM Event Type Code), both "code meaning" of DCM.
AUDIT_VOCABULARY: dict[str, tuple[str, str]] = {
    "login": ("110114 User Authentication", "110122 Login"),
    "login_failed": ("110114 User Authentication", "110122 Login"),
    "logout": ("110114 User Authentication", "110123 Logout"),
    "session_revoked": ("110114 User Authentication", "110123 Logout"),
    "session_reuse_detected": ("110113 Security Alert", "110132 Use of Restricted Function"),
    "account_locked": ("110113 Security Alert", "110132 Use of Restricted Function"),
    "account_unlocked": ("110113 Security Alert", "110137 User Security Attributes Changed"),
    "user_registered": ("110113 Security Alert", "110137 User Security Attributes Changed"),
    "email_verified": ("110113 Security Alert", "110137 User Security Attributes Changed"),
    "password_changed": ("110113 Security Alert", "110137 User Security Attributes Changed"),
    "password_reset": ("110113 Security Alert", "110137 User Security Attributes Changed"),
    "profile_changed": ("110113 Security Alert", "110137 User Security Attributes Changed"),
    "twofactor_enabled": ("110113 Security Alert", "110137 User Security Attributes Changed"),
    "twofactor_disabled": ("110113 Security Alert", "110137 User Security Attributes Changed"),
    "twofactor_reset": ("110113 Security Alert", "110137 User Security Attributes Changed"),
    "role_changed": ("110113 Security Alert", "110136 Security Roles Changed"),
    "account_approved": ("110113 Security Alert", "110136 Security Roles Changed"),
    "admin_access_changed": ("110113 Security Alert", "110136 Security Roles Changed"),
    "invitation_changed": ("110113 Security Alert", "110129 Security Configuration"),
    "user_created": ("110113 Security Alert", "110137 User Security Attributes Changed"),
    "user_deleted": ("110113 Security Alert", "110137 User Security Attributes Changed"),
    "password_set_by_admin": ("110113 Security Alert", "110137 User Security Attributes Changed"),
    "twofactor_device_changed": (
        "110113 Security Alert",
        "110137 User Security Attributes Changed",
    ),
    "lockout_records_changed": ("110113 Security Alert", "110129 Security Configuration"),
    # An administrator deleted a device's Web Push subscription (notifications admin).
    "push_subscription_revoked": ("110113 Security Alert", "110129 Security Configuration"),
    "data_import": ("110107 Data Import", ""),
    "instances_transferred": ("110104 DICOM Instances Transferred", ""),
    "instances_accessed": ("110103 DICOM Instances Accessed", ""),
    "export": ("110106 Export", ""),
    "audit_log_used": ("110101 Audit Log Used", ""),
}


class _Facility(Enum):
    OF_USER = "of_user"


# The default of audit_record's ``facility_id``: the facility the acting user belongs to now.
FACILITY_OF_USER: Final = _Facility.OF_USER
# A facility id, None (no facility), or FACILITY_OF_USER.
FacilityChoice = int | None | Literal[_Facility.OF_USER]


def audit_record(
    *,
    action: str,
    user: User | None = None,
    facility_id: FacilityChoice = FACILITY_OF_USER,
    username: str = "",
    outcome: str = AuditOutcome.SUCCESS,
    ip_address: str | None = None,
    user_agent: str = "",
    object_type: str = "",
    object_id: str = "",
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event. ``detail`` holds ids, counts and codes only, never patient data.

    The event is filed under ``facility_id`` (what auditors of a facility see): by default
    the acting user's facility at this moment; an upload's events pass the upload's.

    Raises KeyError for an action missing from AUDIT_VOCABULARY (a programming error).
    """
    event_id, event_type = AUDIT_VOCABULARY[action]
    return AuditEvent.objects.create(
        action=action,
        event_id=event_id,
        event_type=event_type,
        outcome=outcome,
        user=user,
        username=user.username if user is not None else username[:150],
        facility_id=(
            (user.facility_id if user is not None else None)
            if facility_id is FACILITY_OF_USER
            else facility_id
        ),
        ip_address=ip_address or None,
        user_agent=user_agent[:300],
        object_type=object_type,
        object_id=object_id,
        detail=detail or {},
    )


def audit_export_record(*, user: User, client: ClientInfo, filters: dict[str, str]) -> AuditEvent:
    """Reading the audit trail is itself audited (DICOM "Audit Log Used")."""
    return audit_record(
        action="audit_log_used",
        user=user,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
        detail={"filters": filters},
    )
