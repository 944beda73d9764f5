"""Only the documented public endpoints answer without a token; every other one is 401."""

import re
import uuid

import pytest

pytestmark = pytest.mark.django_db

PUBLIC = {
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/refresh"),
    ("post", "/api/v1/auth/logout"),
    ("post", "/api/v1/auth/register"),
    ("get", "/api/v1/auth/verify-email"),
    ("post", "/api/v1/auth/verify-email"),
    ("post", "/api/v1/auth/verify-email/resend"),
    ("post", "/api/v1/auth/password-reset"),
    ("post", "/api/v1/auth/password-reset/confirm"),
    ("get", "/api/v1/health"),
    ("get", "/api/v1/schema/"),
}


def operations(client):
    schema = client.get("/api/v1/schema/?format=json").json()
    for path, methods in schema["paths"].items():
        for method in methods:
            if method in ("get", "post", "put", "patch", "delete"):
                yield method, path


def test_every_endpoint_but_the_public_ones_needs_a_token(client):
    checked = 0
    for method, path in operations(client):
        if (method, path) in PUBLIC:
            continue
        concrete = path.replace("{upload_id}", str(uuid.uuid4())).replace(
            "{session_id}", str(uuid.uuid4())
        )
        concrete = re.sub(r"\{\w+_id\}", "1", concrete)  # integer ids (reports)
        response = getattr(client, method)(concrete)
        assert response.status_code == 401, (method, path, response.status_code)
        assert response["WWW-Authenticate"].startswith("Bearer")
        checked += 1
    assert checked >= 15


def test_the_public_endpoints_are_documented(client):
    documented = set(operations(client))
    assert PUBLIC - {("get", "/api/v1/schema/")} <= documented
    assert client.get("/api/v1/docs/").status_code == 200


def test_every_operation_documents_its_errors(client):
    schema = client.get("/api/v1/schema/?format=json").json()
    missing = [
        (method, path)
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
        if path.startswith("/api/v1/auth/")
        and not any(code.startswith(("4", "5")) for code in operation["responses"])
    ]
    assert missing == []
