"""The admin sign-in asks accounts with 2FA for their one-time code."""

import pytest
from django_otp.oath import totp
from django_otp.plugins.otp_totp.models import TOTPDevice

from accounts.models import User

pytestmark = pytest.mark.django_db

PASSWORD = "Correct-Horse-Battery-9"


@pytest.fixture
def admin_user():
    return User.objects.create_superuser("chief", "chief@example.org", PASSWORD)


def sign_in(client, **extra):
    return client.post(
        "/admin/login/?next=/admin/", {"username": "chief", "password": PASSWORD, **extra}
    )


def test_admin_without_2fa_signs_in_with_the_password(client, admin_user):
    assert sign_in(client).status_code == 302
    assert client.get("/admin/accounts/user/").status_code == 200


def test_admin_with_2fa_needs_the_code(client, admin_user):
    device = TOTPDevice.objects.create(user=admin_user, name="phone", confirmed=True)
    response = sign_in(client)
    assert response.status_code == 200  # the form again, with an error
    assert client.get("/admin/accounts/user/").status_code == 302  # still signed out
    code = f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits):0{device.digits}d}"
    assert sign_in(client, otp_token=code).status_code == 302
    assert client.get("/admin/accounts/user/").status_code == 200
