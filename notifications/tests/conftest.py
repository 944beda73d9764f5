"""Fixtures of the notifications tests: users, uploads, sessions with their tokens."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.models import AuthSession, User
from accounts.tests.factories import UserFactory
from uploads.models import Study, UploadSession, UploadState


@dataclass
class SignedIn:
    user: User
    session: AuthSession
    access: str

    @property
    def headers(self) -> dict[str, str]:
        return {"HTTP_AUTHORIZATION": f"Bearer {self.access}"}


def sign_in(user: User, *, lifetime: timedelta | None = None) -> SignedIn:
    """A real sign-in session and an access token carrying its ``sid``."""
    session = AuthSession.objects.create(user=user, user_agent="pytest")
    refresh = RefreshToken.for_user(user)
    refresh["sid"] = str(session.id)
    access = refresh.access_token
    if lifetime is not None:
        access.set_exp(lifetime=lifetime)
    return SignedIn(user=user, session=session, access=str(access))


def make_upload(
    *,
    owner: User,
    state: str = UploadState.FORWARDING,
    modalities: list[str] | None = None,
    **fields: Any,
) -> UploadSession:
    upload = UploadSession.objects.create(
        owner=owner,
        facility=owner.facility,
        state=state,
        total_size=1000,
        chunk_size=256 * 1024,
        total_chunks=1,
        **fields,
    )
    Study.objects.create(
        session=upload,
        study_instance_uid=f"1.2.826.0.1.3680043.8.498.{uuid.uuid4().int % 10**20}",
        patient_name="Secret^Patient",
        patient_id="PID-4242",
        patient_birth_date="19700101",
        modalities=modalities if modalities is not None else ["CT"],
    )
    return upload


@pytest.fixture
def technician(db: None) -> User:
    return UserFactory(username="tech-notify")


@pytest.fixture
def signed_in(technician: User) -> SignedIn:
    return sign_in(technician)


@pytest.fixture
def fast_stream(settings: Any) -> Any:
    settings.NOTIFICATIONS_HEARTBEAT_SECONDS = 0.5
    settings.NOTIFICATIONS_SESSION_CHECK_SECONDS = 0.2
    settings.NOTIFICATIONS_POLL_SECONDS = 0.05
    return settings


def now() -> Any:
    return timezone.now()


# The stand-in push service of the Web Push tests (push_service.py).
from .push_service import push_service  # noqa: E402, F401
