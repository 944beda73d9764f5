"""Schemathesis: requests generated from the OpenAPI schema never get a 5xx.

Covers the auth, account and upload endpoints, signed in as an administrator (who reaches
every upload) and anonymously.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.tests.factories import UserFactory

pytestmark = pytest.mark.django_db

# Enough generated requests per operation to reach the edge cases of every field while the
# whole run stays well under a minute.
EXAMPLES_PER_OPERATION = 15


@pytest.fixture
def api_schema(settings_override):
    # Like Django's test client: a request must not close the test's database connection
    # (and with it the transaction every test runs in).
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", get_wsgi_application())
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def settings_override(settings, tmp_path):
    settings.UPLOAD_STORAGE_DIR = tmp_path / "uploads"
    return settings


@pytest.fixture
def admin_headers(db):
    admin = UserFactory(role="admin")
    return {"Authorization": f"Bearer {RefreshToken.for_user(admin).access_token}"}


def test_no_server_error_for_generated_requests(api_schema, admin_headers):
    schema = api_schema.include(path_regex=r"^/api/v1/(auth/|upload|uploads)")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    seen: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def no_server_error(case):
            for headers in (admin_headers, {}):
                response = case.call(headers=headers)
                seen.append(response.status_code)
                assert response.status_code < 500, (
                    case.method,
                    case.formatted_path,
                    response.text[:500],
                )

        no_server_error()
    # The run reached the views, not only the authentication in front of them.
    assert {200, 201, 204} & set(seen) and 400 in seen and 401 in seen
