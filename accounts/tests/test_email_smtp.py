"""Email verification through a real SMTP server (aiosmtpd) on this machine."""

import re
from urllib.parse import parse_qs, urlparse

import pytest

from accounts.tests.helpers import login

pytestmark = pytest.mark.django_db


def test_registration_email_arrives_over_smtp_and_its_link_verifies(
    client, smtp_server, django_capture_on_commit_callbacks, settings
):
    settings.PUBLIC_BASE_URL = "https://relay.example.org"
    password = "Blue-Harbour-Lantern-42"
    body = {
        "username": "mtech",
        "email": "mtech@clinic.example",
        "password": password,
        "full_name": "Mo Tech",
    }
    with django_capture_on_commit_callbacks(execute=True):
        assert (
            client.post("/api/v1/auth/register", body, content_type="application/json").status_code
            == 201
        )
    (message,) = smtp_server.wait_for(1)
    assert message["To"] == "mtech@clinic.example"
    assert message["Subject"] == "Confirm your RelayPACS email address"
    link = urlparse(re.search(r"https?://\S+", smtp_server.text(message)).group(0))
    # The link opens the PWA's page, which sends the token to the API.
    assert (link.scheme, link.netloc, link.path) == ("https", "relay.example.org", "/verify-email")
    token = parse_qs(link.query)["token"][0]
    verified = client.post(
        "/api/v1/auth/verify-email", {"token": token}, content_type="application/json"
    )
    assert verified.status_code == 200
    assert login(client, "mtech", password).status_code == 200


def test_password_reset_email_arrives_over_smtp_with_the_pwa_link(
    client, smtp_server, django_capture_on_commit_callbacks, settings
):
    from accounts.tests.factories import UserFactory

    settings.PUBLIC_BASE_URL = "https://relay.example.org"
    user = UserFactory()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/v1/auth/password-reset", {"email": user.email}, content_type="application/json"
        )
    assert response.status_code == 202
    (message,) = smtp_server.wait_for(1)
    assert message["To"] == user.email
    link = urlparse(re.search(r"https?://\S+", smtp_server.text(message)).group(0))
    assert (link.netloc, link.path) == ("relay.example.org", "/reset-password")
    query = parse_qs(link.query)
    new_password = "Green-Meadow-Kettle-77"
    confirmed = client.post(
        "/api/v1/auth/password-reset/confirm",
        {"uid": query["uid"][0], "token": query["token"][0], "new_password": new_password},
        content_type="application/json",
    )
    assert confirmed.status_code == 204
    assert login(client, user.username, new_password).status_code == 200
