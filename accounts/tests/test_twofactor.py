import re
import time
from urllib.parse import parse_qs, urlparse

import pytest
from django_otp.oath import TOTP
from django_otp.plugins.otp_static.models import StaticDevice
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import AuditEvent
from accounts.services import twofactor_backup_codes_left
from accounts.tests.factories import UserFactory
from accounts.tests.helpers import PASSWORD, bearer, login

pytestmark = pytest.mark.django_db


def code(device, steps_ahead=0):
    """The TOTP code of ``device`` for the time step ``steps_ahead`` of now."""
    totp = TOTP(device.bin_key, device.step, device.t0, device.digits, device.drift)
    totp.time = time.time() + steps_ahead * device.step
    return f"{totp.token():06d}"


def forgive_failures(user):
    """django-otp slows down guessing (1 s, 2 s, 4 s... after each wrong code): reset it."""
    for model in (TOTPDevice, StaticDevice):
        model.objects.filter(user=user).update(throttling_failure_count=0)


def signed_in(client, user):
    return bearer(login(client, user.username).json()["access"])


def setup(client, auth, password=PASSWORD):
    body = {} if password is None else {"password": password}
    return client.post("/api/v1/auth/2fa/setup", body, content_type="application/json", **auth)


def enable(client, user):
    auth = signed_in(client, user)
    assert setup(client, auth).status_code == 200
    device = TOTPDevice.objects.get(user=user)
    response = client.post(
        "/api/v1/auth/2fa/confirm", {"otp": code(device)}, content_type="application/json", **auth
    )
    assert response.status_code == 200, response.json()
    return auth, device, response.json()["backup_codes"]


def test_setup_returns_an_otpauth_uri_and_a_qr_svg(client):
    user = UserFactory()
    response = setup(client, signed_in(client, user))
    assert response.status_code == 200
    body = response.json()
    uri = urlparse(body["otpauth_uri"])
    assert uri.scheme == "otpauth" and uri.netloc == "totp"
    assert parse_qs(uri.query)["issuer"] == ["RelayPACS"]
    assert body["qr_svg"].lstrip().startswith("<") and "<svg" in body["qr_svg"]


def test_2fa_is_off_until_confirmed_with_a_first_code(client):
    user = UserFactory()
    auth = signed_in(client, user)
    setup(client, auth)
    wrong = client.post(
        "/api/v1/auth/2fa/confirm", {"otp": "000000"}, content_type="application/json", **auth
    )
    assert wrong.status_code == 400
    assert login(client, user.username).status_code == 200  # still off


def test_confirming_gives_ten_backup_codes_and_then_login_needs_a_code(client):
    user = UserFactory()
    _, device, backup_codes = enable(client, user)
    assert len(backup_codes) == 10 and len(set(backup_codes)) == 10
    without = login(client, user.username)
    assert without.status_code == 401
    assert without.json()["error"]["code"] == "otp_required"
    wrong = login(client, user.username, otp="000000" if code(device, 1) != "000000" else "111111")
    assert wrong.json()["error"]["code"] == "invalid_otp"
    forgive_failures(user)
    assert login(client, user.username, otp=code(device, 1)).status_code == 200
    assert AuditEvent.objects.filter(action="twofactor_enabled", user=user).exists()


def test_a_totp_code_cannot_be_replayed(client):
    user = UserFactory()
    _, device, _ = enable(client, user)
    next_code = code(device, 1)
    assert login(client, user.username, otp=next_code).status_code == 200
    replay = login(client, user.username, otp=next_code)
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "invalid_otp"


def test_a_backup_code_works_once(client):
    user = UserFactory()
    _, _, backup_codes = enable(client, user)
    assert login(client, user.username, otp=backup_codes[0]).status_code == 200
    assert login(client, user.username, otp=backup_codes[0]).status_code == 401
    forgive_failures(user)
    status = client.get("/api/v1/auth/2fa", **signed_in_with(client, user, backup_codes[1]))
    assert status.json() == {"enabled": True, "backup_codes_left": 8}


def signed_in_with(client, user, otp):
    return bearer(login(client, user.username, otp=otp).json()["access"])


def test_disabling_needs_a_current_code(client):
    user = UserFactory()
    auth, device, _ = enable(client, user)
    refused = client.post(
        "/api/v1/auth/2fa/disable", {"otp": "12345"}, content_type="application/json", **auth
    )
    assert refused.status_code == 400
    forgive_failures(user)
    done = client.post(
        "/api/v1/auth/2fa/disable",
        {"otp": code(device, 1)},
        content_type="application/json",
        **auth,
    )
    assert done.status_code == 204
    assert login(client, user.username, PASSWORD).status_code == 200
    assert AuditEvent.objects.filter(action="twofactor_disabled", user=user).exists()


def test_setting_up_twice_while_on_is_409(client):
    user = UserFactory()
    auth, _, _ = enable(client, user)
    response = setup(client, auth)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "twofactor_already_enabled"


def test_wrong_codes_are_slowed_down(client):
    user = UserFactory()
    _, device, _ = enable(client, user)
    login(client, user.username, otp="000000" if code(device, 1) != "000000" else "111111")
    # Right after a wrong code even the right one waits out django-otp's delay.
    assert login(client, user.username, otp=code(device, 1)).status_code == 401


@pytest.mark.parametrize(
    ("password", "error"),
    [
        (None, "current_password_required"),
        ("", "current_password_required"),
        ("nope", "invalid_current_password"),
    ],
)
def test_setup_needs_the_current_password(client, password, error):
    user = UserFactory()
    response = setup(client, signed_in(client, user), password=password)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == error
    assert response.json()["error"]["message"] and response.json()["error"]["hint"]
    assert not TOTPDevice.objects.filter(user=user).exists()


def test_backup_codes_are_stored_as_keyed_digests_not_in_clear(client, settings):
    from django_otp.plugins.otp_static.models import StaticToken

    from accounts.services.twofactor import backup_code_digest

    user = UserFactory()
    _, _, backup_codes = enable(client, user)
    stored = set(StaticToken.objects.filter(device__user=user).values_list("token", flat=True))
    assert len(stored) == 10
    assert stored.isdisjoint(backup_codes)
    assert stored == {backup_code_digest(c) for c in backup_codes}
    assert all(len(t) == 16 for t in stored)
    # The digest is keyed: the same code under another SECRET_KEY gives another digest.
    settings.SECRET_KEY = "another-secret-key-" + "x" * 40
    assert backup_code_digest(backup_codes[0]) not in stored


def test_a_backup_code_is_accepted_with_capitals_and_spaces_once(client):
    user = UserFactory()
    _, _, backup_codes = enable(client, user)
    typed = " ".join([backup_codes[0][:5].upper(), backup_codes[0][5:]])
    assert login(client, user.username, otp=typed).status_code == 200
    assert login(client, user.username, otp=backup_codes[0]).status_code == 401


def test_a_digest_itself_is_not_a_backup_code(client):
    from django_otp.plugins.otp_static.models import StaticToken

    user = UserFactory()
    enable(client, user)
    digest = StaticToken.objects.filter(device__user=user).values_list("token", flat=True)[0]
    assert login(client, user.username, otp=digest).status_code == 401


def wrong_code(device):
    return "000000" if code(device, 1) != "000000" else "111111"


def failures(device):
    device.refresh_from_db()
    return device.throttling_failure_count


def test_wrong_codes_to_turn_2fa_off_are_counted_and_then_even_the_right_code_waits(client):
    user = UserFactory()
    auth, device, _ = enable(client, user)
    refused = client.post(
        "/api/v1/auth/2fa/disable",
        {"otp": wrong_code(device)},
        content_type="application/json",
        **auth,
    )
    assert refused.json()["error"]["code"] == "invalid_otp"
    # The failure django-otp wrote survived the error (it used to be rolled back with it).
    assert failures(device) == 1
    waiting = client.post(
        "/api/v1/auth/2fa/disable",
        {"otp": code(device, 1)},
        content_type="application/json",
        **auth,
    )
    assert waiting.status_code == 400
    error = waiting.json()["error"]
    assert error["code"] == "otp_throttled"
    assert "paused" in error["message"] and "was not checked" in error["message"]
    assert re.search(r"Wait \d+ seconds", error["hint"])
    assert TOTPDevice.objects.filter(user=user, confirmed=True).exists()  # still on
    forgive_failures(user)
    done = client.post(
        "/api/v1/auth/2fa/disable",
        {"otp": code(device, 1)},
        content_type="application/json",
        **auth,
    )
    assert done.status_code == 204


def test_wrong_backup_codes_to_turn_2fa_off_are_counted(client):
    user = UserFactory()
    auth, _, backup_codes = enable(client, user)
    client.post(
        "/api/v1/auth/2fa/disable", {"otp": "ffffffffff"}, content_type="application/json", **auth
    )
    assert StaticDevice.objects.get(user=user).throttling_failure_count == 1
    waiting = client.post(
        "/api/v1/auth/2fa/disable",
        {"otp": backup_codes[0]},
        content_type="application/json",
        **auth,
    )
    assert waiting.json()["error"]["code"] == "otp_throttled"
    assert twofactor_backup_codes_left(user=user) == 10  # the code was not spent


def test_wrong_first_codes_are_counted_and_then_even_the_right_code_waits(client):
    user = UserFactory()
    auth = signed_in(client, user)
    setup(client, auth)
    device = TOTPDevice.objects.get(user=user)
    wrong = client.post(
        "/api/v1/auth/2fa/confirm",
        {"otp": wrong_code(device)},
        content_type="application/json",
        **auth,
    )
    assert wrong.json()["error"]["code"] == "invalid_otp"
    assert failures(device) == 1
    waiting = client.post(
        "/api/v1/auth/2fa/confirm",
        {"otp": code(device)},
        content_type="application/json",
        **auth,
    )
    assert waiting.status_code == 400
    assert waiting.json()["error"]["code"] == "otp_throttled"
    device.refresh_from_db()
    assert not device.confirmed
    forgive_failures(user)
    assert (
        client.post(
            "/api/v1/auth/2fa/confirm",
            {"otp": code(device)},
            content_type="application/json",
            **auth,
        ).status_code
        == 200
    )


def test_a_right_sign_in_code_during_the_delay_is_refused_with_words_for_it(client):
    user = UserFactory()
    _, device, _ = enable(client, user)
    login(client, user.username, otp=wrong_code(device))
    waiting = login(client, user.username, otp=code(device, 1))
    assert waiting.status_code == 401
    assert waiting.json()["error"]["code"] == "otp_throttled"


@pytest.mark.parametrize("path", ["/api/v1/auth/2fa/confirm", "/api/v1/auth/2fa/disable"])
def test_code_checks_are_rate_limited_like_sign_in(client, monkeypatch, path):
    from rest_framework.throttling import ScopedRateThrottle

    auth = signed_in(client, UserFactory())
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", {"auth_login": "3/hour"})
    for _ in range(3):
        client.post(path, {"otp": "123456"}, content_type="application/json", **auth)
    response = client.post(path, {"otp": "123456"}, content_type="application/json", **auth)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limited"
