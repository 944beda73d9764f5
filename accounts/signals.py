"""Receivers of other libraries' signals (connected in AccountsConfig.ready).

- After ``migrate``: the managed administrators' group gets its permissions and every
  account the admin-site access its role decides (services.roles).
- django-axes' ``user_locked_out``: one audit event per lockout, at the failed sign-in
  that locked (the API's or the admin site's). Axes sends the signal again for every
  attempt refused while locked; those are failed sign-ins, not new lockouts.
"""

from __future__ import annotations

from typing import Any

from axes.helpers import get_failure_limit

from .clientinfo import client_info
from .models import AuditOutcome


def sync_admin_access_after_migrate(sender: Any, **kwargs: Any) -> None:
    from .services.roles import admin_group_sync, users_role_access_sync

    # post_migrate is sent once per app: the permissions of the apps after accounts exist
    # only at the later signals, so the (idempotent) sync runs at each.
    admin_group_sync()
    users_role_access_sync()


def audit_lockout(
    sender: Any, request: Any = None, username: str | None = None, **kwargs: Any
) -> None:
    if request is None:
        return
    failures = getattr(request, "axes_failures_since_start", None)
    credentials = getattr(request, "axes_credentials", None) or {"username": username}
    if failures != get_failure_limit(request, credentials):
        return  # refused while locked already, or the lockout was counted elsewhere
    from .services.audit import audit_record

    client = client_info(request)
    audit_record(
        action="account_locked",
        username=username or "",
        outcome=AuditOutcome.MINOR_FAILURE,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
        detail={"failures": failures},
    )
