"""What administrators do to accounts; every change is audit-logged."""

from __future__ import annotations

from typing import Any

from axes.utils import reset as axes_reset
from django.db import transaction

from ..clientinfo import ClientInfo
from ..models import User
from .audit import audit_record
from .sessions import auth_sessions_revoke_all


def _audit_on_user(
    *, action: str, user: User, by: User | None, client: ClientInfo, detail: dict[str, Any]
) -> None:
    """An administrator's action on ``user``, in the audit trail."""
    audit_record(
        action=action,
        user=by,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
        object_type="user",
        object_id=str(user.pk),
        detail=detail,
    )


def user_unlock(*, user: User, by: User | None, client: ClientInfo) -> int:
    """Clear the failed sign-ins that lock ``user`` out (from every address).

    Returns how many records were removed; unlocking an account that is not locked is harmless.
    """
    removed = int(axes_reset(username=user.get_username()))
    _audit_on_user(
        action="account_unlocked",
        user=user,
        by=by,
        client=client,
        detail={"attempts_cleared": removed},
    )
    return removed


# Fields whose change alters what an account may do or whether it may sign in.
SECURITY_FIELDS = (
    "role",
    "facility_id",
    "is_active",
    "is_staff",
    "is_superuser",
    "email_verified",
    "approval",
)
# Changes that grant or confirm rather than take away: the user's sessions may stay.
_KEEPS_SESSIONS = {"email_verified", "approval"}


def user_security_snapshot(*, user_id: int | None) -> dict[str, object] | None:
    """The security fields of a saved user, to compare before and after an admin edit."""
    if user_id is None:
        return None
    return User.objects.filter(pk=user_id).values(*SECURITY_FIELDS).first()


@transaction.atomic
def user_admin_changed(
    *, user: User, before: dict[str, object] | None, by: User | None, client: ClientInfo
) -> list[str]:
    """Audit what an administrator changed in an account's rights (``user`` is saved).

    A change of role, facility, staff or superuser status or deactivation also ends the
    user's sessions, so the new rights apply from the next sign-in. Returns the changed
    fields.
    """
    if before is None:
        return []
    changed = [f for f in SECURITY_FIELDS if before[f] != getattr(user, f)]
    if not changed:
        return []
    _audit_on_user(
        action="role_changed",
        user=user,
        by=by,
        client=client,
        detail={
            **{f"old_{f}": before[f] for f in changed},
            **{f"new_{f}": getattr(user, f) for f in changed},
        },
    )
    if set(changed) - _KEEPS_SESSIONS:
        auth_sessions_revoke_all(user=user, client=client, reason="role_changed", keep=None)
    return changed


@transaction.atomic
def user_admin_created(*, user: User, by: User | None, client: ClientInfo) -> None:
    """Audit an account an administrator created (``user`` is saved)."""
    _audit_on_user(
        action="user_created",
        user=user,
        by=by,
        client=client,
        detail={
            "username": user.username,
            **{f: getattr(user, f) for f in SECURITY_FIELDS},
        },
    )


@transaction.atomic
def user_admin_delete(*, user: User, by: User | None, client: ClientInfo) -> None:
    """Delete an account from the admin, audited. Its sessions go with it; its audit
    events stay (they keep the username as text)."""
    _audit_on_user(
        action="user_deleted",
        user=user,
        by=by,
        client=client,
        detail={"username": user.username, "role": user.role},
    )
    user.delete()


@transaction.atomic
def user_admin_password_set(*, user: User, by: User | None, client: ClientInfo) -> int:
    """Audit a password an administrator set (or removed) for ``user``, and sign the user
    out everywhere: whoever held the old password must not stay signed in. Returns how
    many sessions ended."""
    _audit_on_user(
        action="password_set_by_admin",
        user=user,
        by=by,
        client=client,
        detail={"usable_password": user.has_usable_password()},
    )
    return auth_sessions_revoke_all(
        user=user, client=client, reason="password_set_by_admin", keep=None
    )


def admin_record_changed(
    *,
    action: str,
    object_type: str,
    object_id: str,
    change: str,
    by: User | None,
    client: ClientInfo,
    detail: dict[str, Any] | None = None,
) -> None:
    """Audit an administrator's edit of a security record (a 2FA device, a lockout record):
    ``change`` is added, changed or deleted."""
    audit_record(
        action=action,
        user=by,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
        object_type=object_type,
        object_id=object_id,
        detail={"change": change, **(detail or {})},
    )
