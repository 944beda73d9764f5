"""The beat task's cleanup: expired refresh tokens and long-ended sessions go, live ones stay."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken

from accounts import tasks
from accounts.models import AuthSession
from accounts.services.cleanup import AUTH_SESSION_RETENTION, auth_records_cleanup
from accounts.tests.factories import UserFactory
from accounts.tests.helpers import login, refresh

pytestmark = pytest.mark.django_db


def test_expired_tokens_and_long_ended_sessions_are_deleted_live_ones_kept(client):
    user = UserFactory()
    first = login(client, user.username).json()
    refresh(client, first["refresh"])  # rotation blacklists the first refresh token
    assert OutstandingToken.objects.count() == 2 and BlacklistedToken.objects.count() == 1
    now = timezone.now()
    lifetime = settings.SIMPLE_JWT["REFRESH_TOKEN_LIFETIME"]
    # Make the rotated (blacklisted) token one that expired a minute ago.
    rotated = BlacklistedToken.objects.get().token
    OutstandingToken.objects.filter(pk=rotated.pk).update(
        created_at=now - lifetime - timedelta(minutes=1), expires_at=now - timedelta(minutes=1)
    )
    long_ago = now - AUTH_SESSION_RETENTION - timedelta(hours=1)
    recently = now - AUTH_SESSION_RETENTION + timedelta(hours=1)
    revoked_long_ago = AuthSession.objects.create(user=user, revoked_at=long_ago)
    revoked_recently = AuthSession.objects.create(user=user, revoked_at=recently)
    idle_long_ago = AuthSession.objects.create(
        user=user, last_seen_at=long_ago - settings.AUTH_SESSION_IDLE_TIMEOUT
    )
    idle_recently = AuthSession.objects.create(
        user=user, last_seen_at=recently - settings.AUTH_SESSION_IDLE_TIMEOUT
    )
    live = AuthSession.objects.get(user=user, revoked_at__isnull=True, last_seen_at__gt=recently)

    counts = auth_records_cleanup(now=now)

    assert counts.as_dict() == {"outstanding_tokens": 1, "blacklisted_tokens": 1, "sessions": 2}
    assert not OutstandingToken.objects.filter(pk=rotated.pk).exists()
    assert BlacklistedToken.objects.count() == 0
    assert OutstandingToken.objects.count() == 1  # the current refresh token
    remaining = set(AuthSession.objects.values_list("pk", flat=True))
    assert remaining == {revoked_recently.pk, idle_recently.pk, live.pk}
    assert revoked_long_ago.pk not in remaining and idle_long_ago.pk not in remaining
    # Idempotent, and the beat task runs the same service.
    assert tasks.auth_records_cleanup_task.delay().get() == {
        "outstanding_tokens": 0,
        "blacklisted_tokens": 0,
        "sessions": 0,
    }


def test_the_cleanup_is_on_the_beat_schedule():
    entry = settings.CELERY_BEAT_SCHEDULE["accounts-cleanup"]
    assert entry["task"] == "accounts.tasks.auth_records_cleanup_task"
    assert entry["task"] == tasks.auth_records_cleanup_task.name
