"""Fixtures of the analytics tests: clinics, users of every role, API clients."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.cache import cache

from accounts.models import Role
from accounts.tests.factories import FacilityFactory, UserFactory
from uploads.tests.fixtures import client_for

from .history import History


@pytest.fixture(autouse=True)
def _empty_cache() -> None:
    cache.clear()


@pytest.fixture
def north(db: None) -> Any:
    return FacilityFactory(code="north", name="North Clinic")


@pytest.fixture
def south(db: None) -> Any:
    return FacilityFactory(code="south", name="South Clinic")


@pytest.fixture
def people(north: Any, south: Any) -> dict[str, Any]:
    return {
        "alice": UserFactory(username="alice", role=Role.RADIOGRAPHER, facility=north),
        "bob": UserFactory(username="bob", role=Role.CLINICIAN, facility=south),
        "nobody": UserFactory(username="nobody", role=Role.CLINICIAN, facility=None),
        "carol": UserFactory(username="carol", role=Role.CLINICIAN, facility=north),
        "admin": UserFactory(username="root", role=Role.ADMIN, facility=None),
        "reader": UserFactory(username="reader", role=Role.RADIOLOGIST, facility=None),
        "auditor": UserFactory(username="auditor", role=Role.AUDITOR, facility=north),
    }


@pytest.fixture
def history(django_capture_on_commit_callbacks: Any) -> History:
    return History(django_capture_on_commit_callbacks)


@pytest.fixture
def api_for() -> Any:
    return client_for
