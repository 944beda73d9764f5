"""The managed administrators' group holds exactly ADMIN_PERMISSIONS, every one of them a
real permission, and a database made before a change of that list gets the new ones at
the next ``migrate`` (post_migrate re-syncs the group: no data migration needed)."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command

from accounts.models import Role, User
from accounts.services.roles import ADMIN_GROUP_NAME, ADMIN_PERMISSIONS, user_role_access_apply
from accounts.tests.factories import UserFactory

pytestmark = pytest.mark.django_db

# The admin pages added for notifications and statistics, and what they offer.
ADDED = {
    "notifications.view_notification",
    "notifications.change_notification",  # the list's mark read / unread
    "notifications.view_event",
    "notifications.view_pushsubscription",
    "notifications.delete_pushsubscription",  # revoking a device
    "analytics.view_uploadrollup",
    "analytics.view_uploadtimeline",
}


def _listed() -> set[str]:
    """ADMIN_PERMISSIONS as ``app_label.codename`` (apps not installed are skipped)."""
    installed = {config.label for config in apps.get_app_configs()}
    return {
        f"{app_label}.{action}_{model}"
        for app_label, models in ADMIN_PERMISSIONS.items()
        if app_label in installed
        for model, actions in models.items()
        for action in actions
    }


def _held(group: Group) -> set[str]:
    return {
        f"{app_label}.{codename}"
        for app_label, codename in group.permissions.values_list(
            "content_type__app_label", "codename"
        )
    }


def test_the_group_holds_exactly_the_listed_permissions_and_each_exists():
    listed = _listed()
    existing = {
        f"{app_label}.{codename}"
        for app_label, codename in Permission.objects.values_list(
            "content_type__app_label", "codename"
        )
    }
    assert not listed - existing, "ADMIN_PERMISSIONS names a permission that does not exist"
    assert _held(Group.objects.get(name=ADMIN_GROUP_NAME)) == listed
    assert listed >= ADDED
    # Nothing those pages do not offer.
    for never in (
        "notifications.add_notification",
        "notifications.delete_notification",
        "notifications.change_event",
        "notifications.delete_event",
        "notifications.change_pushsubscription",
        "analytics.change_uploadrollup",
        "analytics.delete_uploadrollup",
        "analytics.change_uploadtimeline",
        "analytics.delete_uploadtimeline",
    ):
        assert never not in listed, never


def test_a_database_from_before_gets_the_new_permissions_at_the_next_migrate():
    ada = UserFactory(username="ada", role=Role.ADMIN)
    user_role_access_apply(user=ada)
    group = Group.objects.get(name=ADMIN_GROUP_NAME)
    # The group as an older release left it: without the notifications and statistics.
    group.permissions.remove(
        *Permission.objects.filter(content_type__app_label__in=["notifications", "analytics"])
    )
    ada = User.objects.get(pk=ada.pk)  # no cached permissions
    assert not ada.has_perm("notifications.view_notification")

    call_command("migrate", verbosity=0, interactive=False)

    assert _held(group) >= ADDED
    ada = User.objects.get(pk=ada.pk)
    assert all(ada.has_perm(name) for name in ADDED)
    assert not ada.is_superuser
