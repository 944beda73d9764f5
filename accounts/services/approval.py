"""Approval of self-registered accounts, and the facility invitation codes that approve
them at registration. Every change is audited."""

from __future__ import annotations

import base64
import hashlib
import secrets

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from relaypacs.errors import ApplicationError

from ..clientinfo import ClientInfo
from ..models import Approval, Facility, FacilityInvitation, User
from .audit import audit_record

# 10 random bytes: 80 bits, 16 characters of base32. Guessing one of a few live codes at
# the registration rate limit (20 an hour per address) takes far longer than any expiry.
INVITATION_CODE_BYTES = 10
INVITATION_GROUP = 4


def invitation_code_digest(*, code: str) -> str:
    """The stored form of a code: SHA-256 of it without dashes, spaces or case."""
    normalised = "".join(code.split()).replace("-", "").upper()
    return hashlib.sha256(normalised.encode()).hexdigest()


def _invitation_code_new() -> str:
    raw = base64.b32encode(secrets.token_bytes(INVITATION_CODE_BYTES)).decode()
    return "-".join(raw[i : i + INVITATION_GROUP] for i in range(0, len(raw), INVITATION_GROUP))


@transaction.atomic
def invitation_create(
    *, invitation: FacilityInvitation, by: User | None, client: ClientInfo
) -> str:
    """Save a new ``invitation`` (facility, role, label, max_uses and expires_at filled in)
    with a fresh random code, audited as ``invitation_changed``. Returns the code: it is
    stored only as a digest, so this is the one time anyone sees it."""
    code = _invitation_code_new()
    invitation.code_digest = invitation_code_digest(code=code)
    invitation.created_by = by
    invitation.save()
    audit_record(
        action="invitation_changed",
        user=by,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
        object_type="facilityinvitation",
        object_id=str(invitation.pk),
        detail={
            "change": "added",
            "facility_id": invitation.facility_id,
            "role": invitation.role,
            "max_uses": invitation.max_uses,
            "expires_at": invitation.expires_at.isoformat(),
        },
    )
    return code


def invitation_redeem(*, code: str) -> FacilityInvitation:
    """Count one use of the invitation with this code, in the caller's transaction.

    The use is one conditional UPDATE (not expired, uses below max_uses) whose row count
    is checked, so concurrent registrations never use a code more often than allowed.
    Raises ``invalid_invitation_code`` (400) for an unknown, expired or used-up code;
    the answer depends on the code only, never on any account.
    """
    invitation = FacilityInvitation.objects.filter(
        code_digest=invitation_code_digest(code=code)
    ).first()
    counted = (
        invitation is not None
        and FacilityInvitation.objects.filter(
            pk=invitation.pk, expires_at__gt=timezone.now(), uses__lt=F("max_uses")
        ).update(uses=F("uses") + 1)
        == 1
    )
    if invitation is None or not counted:
        raise ApplicationError(
            "invalid_invitation_code",
            "This invitation code is not valid: it may be mistyped, expired or used up.",
            "Check the code with whoever gave it to you, or register without a code and "
            "wait for an administrator to approve your account.",
        )
    return invitation


@transaction.atomic
def user_approve(
    *, user: User, role: str, facility: Facility | None, by: User | None, client: ClientInfo
) -> bool:
    """Approve a pending account with ``role`` in ``facility``, audited as
    ``account_approved`` (old and new role and facility).

    One conditional UPDATE from pending: returns False, and changes and records nothing,
    when the account is not pending (approved already, e.g. by another administrator at
    the same moment). The user's sessions stay: they gain rights, lose none, and every
    request reads the account afresh.
    """
    facility_id = facility.pk if facility is not None else None
    approved = User.objects.filter(pk=user.pk, approval=Approval.PENDING).update(
        approval=Approval.APPROVED, role=role, facility_id=facility_id
    )
    if approved != 1:
        return False
    audit_record(
        action="account_approved",
        user=by,
        # Filed under the facility the account joins: its auditors see who was let in.
        facility_id=facility_id,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
        object_type="user",
        object_id=str(user.pk),
        detail={
            "old_role": user.role,
            "new_role": role,
            "old_facility_id": user.facility_id,
            "new_facility_id": facility_id,
        },
    )
    user.approval, user.role, user.facility = Approval.APPROVED, role, facility
    return True
