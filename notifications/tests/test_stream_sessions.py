"""The sessions of open streams are checked together, one query per check for a whole
web process (1,000 connections made 200 queries a second when each checked its own): a
revoked session's streams close, the others of the same user stay open."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from accounts.models import AuthSession
from accounts.tests.factories import UserFactory
from notifications import live, selectors

from .conftest import sign_in
from .test_streams import TIMEOUT, _append, _bearer, _next, _ws

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_selector_tells_which_streams_may_go_on(settings):
    user, inactive = UserFactory(), UserFactory(is_active=False)
    on, revoked, idle = sign_in(user), sign_in(user), sign_in(user)
    revoked.session.revoked_at = timezone.now()
    revoked.session.save(update_fields=["revoked_at"])
    AuthSession.objects.filter(pk=idle.session.pk).update(
        last_seen_at=timezone.now() - settings.AUTH_SESSION_IDLE_TIMEOUT - timedelta(minutes=1)
    )
    theirs = sign_in(UserFactory())
    keys = [
        (user.pk, str(on.session.id)),
        (user.pk, str(revoked.session.id)),
        (user.pk, str(idle.session.id)),
        (user.pk, None),  # a token without a session
        (inactive.pk, None),
        (user.pk, str(theirs.session.id)),  # another user's session id
        (user.pk, "not-a-uuid"),
    ]
    assert selectors.stream_sessions_on(keys=keys) == {
        (user.pk, str(on.session.id)),
        (user.pk, None),
    }


def test_many_streams_are_checked_with_one_query_per_check(signed_in, fast_stream, monkeypatch):
    """A revoked device's streams close; the user's other device keeps its stream."""
    other = sign_in(signed_in.user)
    calls: list[int] = []
    real = selectors.stream_sessions_on

    def counted(*, keys):
        calls.append(len(keys))
        return real(keys=keys)

    monkeypatch.setattr(selectors, "stream_sessions_on", counted)

    async def scenario() -> None:
        revoked = [_ws(_bearer(signed_in.access)) for _ in range(3)]
        kept = [_ws(_bearer(other.access)) for _ in range(3)]
        for ws in revoked + kept:
            await ws.connect(timeout=TIMEOUT)
            await ws.send_json_to({"type": "resume", "after": None})
            assert (await _next(ws))["type"] == "ready"
        calls.clear()
        await asyncio.sleep(0.5)  # a few checks (every 0.2 s) with all six open
        assert calls and all(size == 2 for size in calls)  # two sessions, one query each time
        assert len(calls) <= 4
        await sync_to_async(
            lambda: AuthSession.objects.filter(pk=signed_in.session.pk).update(
                revoked_at=timezone.now()
            )
        )()
        for ws in revoked:
            assert await _next(ws) == {"type": "closed", "reason": "session_ended"}
        await _append(signed_in.user.pk)
        for ws in kept:
            assert (await _next(ws))["type"] == "upload.completed"
        assert live.hub().sessions == {(other.user.pk, str(other.session.id)): 3}
        for ws in revoked + kept:
            await ws.disconnect()

    asyncio.run(scenario())


def _count_reads(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = selectors.events_after

    def counted(*, user_id, after):
        calls.append(user_id)
        return real(user_id=user_id, after=after)

    monkeypatch.setattr(selectors, "events_after", counted)
    return calls


def test_a_users_streams_woken_together_share_one_read(signed_in, fast_stream, monkeypatch):
    devices = [sign_in(signed_in.user) for _ in range(4)]
    reads = _count_reads(monkeypatch)

    async def scenario() -> None:
        streams = [_ws(_bearer(device.access)) for device in devices]
        for ws in streams:
            await ws.connect(timeout=TIMEOUT)
            await ws.send_json_to({"type": "resume", "after": None})
            assert (await _next(ws))["type"] == "ready"
        await asyncio.sleep(0.3)  # past the hub's first check, which wakes each once
        reads.clear()
        await _append(signed_in.user.pk)
        for ws in streams:
            assert (await _next(ws))["id"] == 1
        assert 1 <= len(reads) < len(streams)
        for ws in streams:
            await ws.disconnect()

    asyncio.run(scenario())


def test_an_idle_streams_heartbeats_read_nothing(signed_in, fast_stream, monkeypatch):
    reads = _count_reads(monkeypatch)

    async def scenario() -> None:
        ws = _ws(_bearer(signed_in.access))
        await ws.connect(timeout=TIMEOUT)
        await ws.send_json_to({"type": "resume", "after": None})
        assert (await _next(ws))["type"] == "ready"
        await asyncio.sleep(0.3)
        reads.clear()
        beats = [await ws.receive_json_from(timeout=TIMEOUT) for _ in range(3)]  # 0.5 s apart
        assert [b["type"] for b in beats] == ["heartbeat"] * 3
        assert reads == []
        await _append(signed_in.user.pk)
        assert (await _next(ws))["id"] == 1  # and a new event is still read at once
        await ws.disconnect()

    asyncio.run(scenario())
