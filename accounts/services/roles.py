"""The role decides who may use the admin site.

An account with the role *Administrator* is staff and a member of the managed group
ADMIN_GROUP_NAME, which holds the permissions of the records an administrator manages
here (ADMIN_PERMISSIONS); every other role is neither. Superusers stay staff whatever
their role (they hold every permission anyway). Nobody ticks *staff* or permissions by
hand: the admin's user page shows them read-only, and every service that sets a role
calls ``user_role_access_apply``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.db.models import Q

from ..clientinfo import ClientInfo
from ..models import Role, User
from .audit import audit_record

ADMIN_GROUP_NAME = "RelayPACS administrators"

_ALL = ("view", "add", "change", "delete")
# app label -> model -> what an administrator may do with it in the admin site. Models of
# apps that are not installed are skipped. Changing what is listed here takes effect at
# the next ``migrate`` (post_migrate re-syncs the group).
ADMIN_PERMISSIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "accounts": {
        "user": _ALL,
        "facility": _ALL,
        "facilityinvitation": _ALL,
        "authsession": ("view",),
        "auditevent": ("view",),
    },
    "uploads": {
        # change: retry and cancel; delete goes through the audited removal service.
        "uploadsession": ("view", "change", "delete"),
        "uploadfile": ("view",),
        "study": ("view",),
    },
    "pacs": {
        "pacsdestination": _ALL,
        "deliveredinstance": ("view",),
        "pacshealthprobe": ("view",),
    },
    "reports": {"report": ("view",), "reportversion": ("view",), "letterhead": _ALL},
    "notifications": {
        # change: the list's "Mark as read/unread" actions only (the page stays read-only).
        "notification": ("view", "change"),
        "event": ("view",),
        # delete: revoking a device's subscription (through the service, audited).
        "pushsubscription": ("view", "delete"),
    },
    # Derived figures, rebuilt by analytics_rebuild: shown only.
    "analytics": {"uploadrollup": ("view",), "uploadtimeline": ("view",)},
    "axes": {
        "accessattempt": ("view", "delete"),
        "accessfailurelog": ("view",),
        "accesslog": ("view",),
    },
    "otp_totp": {"totpdevice": ("view", "change", "delete")},
    "otp_static": {"staticdevice": ("view", "delete")},
    "token_blacklist": {"outstandingtoken": ("view",), "blacklistedtoken": ("view",)},
}


def _admin_permissions() -> list[Permission]:
    wanted = Q(pk__in=[])
    for app_label, models in ADMIN_PERMISSIONS.items():
        for model, actions in models.items():
            wanted |= Q(
                content_type__app_label=app_label,
                content_type__model=model,
                codename__in=[f"{action}_{model}" for action in actions],
            )
    return list(Permission.objects.filter(wanted))


def admin_group_sync() -> Group:
    """Create the managed group or set its permissions to exactly ADMIN_PERMISSIONS.
    Idempotent; run after every ``migrate`` (accounts.apps), when permissions exist."""
    group, _ = Group.objects.get_or_create(name=ADMIN_GROUP_NAME)
    group.permissions.set(_admin_permissions())
    return group


def _admin_group() -> Group:
    group = Group.objects.filter(name=ADMIN_GROUP_NAME).first()
    return group if group is not None else admin_group_sync()


def role_gives_admin_site(*, role: str, is_superuser: bool) -> bool:
    return role == Role.ADMIN or is_superuser


@transaction.atomic
def user_role_access_apply(
    *, user: User, by: User | None = None, client: ClientInfo | None = None, audit: bool = True
) -> bool:
    """Give ``user`` (saved) the admin-site access its role decides: staff and in the
    managed group for an administrator, neither otherwise (superusers stay staff).

    ``is_staff`` is set by one conditional UPDATE (row count checked) and mirrored on
    ``user``. With ``audit``, a change is recorded as ``admin_access_changed``; callers
    that audit the role change themselves, with ``is_staff`` in it, pass ``audit=False``.
    Idempotent; returns whether ``is_staff`` or the group membership changed.
    """
    staff = role_gives_admin_site(role=user.role, is_superuser=user.is_superuser)
    member = user.role == Role.ADMIN
    staff_changed = User.objects.filter(pk=user.pk, is_staff=not staff).update(is_staff=staff) == 1
    user.is_staff = staff
    group = _admin_group()
    in_group = group.user_set.filter(pk=user.pk).exists()
    if member and not in_group:
        group.user_set.add(user)
    elif not member and in_group:
        group.user_set.remove(user)
    changed = staff_changed or member != in_group
    if changed and audit:
        detail: dict[str, Any] = {
            "role": user.role,
            "is_staff": staff,
            "admin_group": member,
        }
        audit_record(
            action="admin_access_changed",
            user=by,
            ip_address=client.ip_address if client is not None else None,
            user_agent=client.user_agent if client is not None else "",
            object_type="user",
            object_id=str(user.pk),
            detail=detail,
        )
    return changed


def users_role_access_sync() -> int:
    """Apply ``user_role_access_apply`` to every account whose access disagrees with its
    role (after ``migrate``: accounts made before this rule, or staff ticked by hand);
    each change audited. Returns how many accounts changed."""
    group = _admin_group()
    disagreeing = (
        User.objects.filter(
            (Q(role=Role.ADMIN) | Q(is_superuser=True)) & Q(is_staff=False)
            | ~Q(role=Role.ADMIN) & Q(is_superuser=False) & Q(is_staff=True)
            | Q(role=Role.ADMIN) & ~Q(groups=group)
            | ~Q(role=Role.ADMIN) & Q(groups=group)
        )
        .distinct()
        .order_by("pk")
    )
    return sum(user_role_access_apply(user=user) for user in disagreeing)
