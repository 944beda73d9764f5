"""Backup codes stored in clear before they were stored as digests work again after the
accounts data migration 0003 (run for real with Django's migration executor)."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken

from accounts.services import twofactor_verify
from accounts.services.twofactor import backup_code_digest
from accounts.tests.factories import UserFactory

pytestmark = pytest.mark.django_db

BEFORE = ("accounts", "0002_sessions_audit_preferences")
AFTER = ("accounts", "0003_backup_codes_to_digests")


def migrate(target):
    with connection.cursor() as cursor:  # PostgreSQL alters no table with rows of unchecked FKs
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate([target])


def test_codes_stored_in_clear_are_replaced_by_their_digests_and_work_once():
    user = UserFactory()
    migrate(BEFORE)
    device = StaticDevice.objects.create(user=user, name="backup", confirmed=True)
    StaticToken.objects.create(device=device, token="a1b2c3d4e5")  # as stored before
    already = StaticToken.objects.create(device=device, token=backup_code_digest("0f0f0f0f0f"))
    assert not twofactor_verify(user=user, code="a1b2c3d4e5")
    StaticDevice.objects.filter(pk=device.pk).update(throttling_failure_count=0)

    migrate(AFTER)

    stored = set(StaticToken.objects.filter(device=device).values_list("token", flat=True))
    assert stored == {backup_code_digest("a1b2c3d4e5"), already.token}  # digests untouched
    assert twofactor_verify(user=user, code="A1B2 C3D4E5")
    assert not twofactor_verify(user=user, code="a1b2c3d4e5")  # spent
    StaticDevice.objects.filter(pk=device.pk).update(throttling_failure_count=0)
    assert twofactor_verify(user=user, code="0f0f0f0f0f")


def test_going_back_keeps_the_digests():
    user = UserFactory()
    device = StaticDevice.objects.create(user=user, name="backup", confirmed=True)
    StaticToken.objects.create(device=device, token=backup_code_digest("a1b2c3d4e5"))
    migrate(BEFORE)
    migrate(AFTER)
    assert list(StaticToken.objects.values_list("token", flat=True)) == [
        backup_code_digest("a1b2c3d4e5")
    ]
