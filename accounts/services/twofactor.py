"""Two-step sign-in (TOTP) with django-otp: enrol, confirm, verify, backup codes, disable."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import qrcode
import qrcode.image.svg
from django.db import transaction
from django.utils.crypto import salted_hmac
from django_otp.models import Device
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from relaypacs.errors import ApplicationError

from ..clientinfo import ClientInfo
from ..models import User
from .audit import audit_record
from .reauth import current_password_confirm

BACKUP_CODE_COUNT = 10
# 5 random bytes: 10 hex characters, easy to type from paper, 40 bits against guessing
# (which django-otp throttles and the sign-in lockout stops).
BACKUP_CODE_BYTES = 5
BACKUP_CODE_LENGTH = 2 * BACKUP_CODE_BYTES
# StaticToken.token holds 16 characters: 64 bits of the HMAC, far more than the code has.
BACKUP_CODE_DIGEST_LENGTH = 16
_BACKUP_CODE_SALT = "relaypacs.backup-code.v1"
DEVICE_NAME = "authenticator"
BACKUP_DEVICE_NAME = "backup"


@dataclass(frozen=True)
class TwoFactorEnrolment:
    otpauth_uri: str
    qr_svg: str


def twofactor_enabled(*, user: User) -> bool:
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def backup_code_digest(code: str) -> str:
    """What is stored of a backup code: HMAC-SHA256 keyed with SECRET_KEY, in hex, cut to
    the 16 characters django-otp's StaticToken holds. A copy of the database alone does
    not give the codes; a new SECRET_KEY makes the stored ones unusable."""
    return salted_hmac(_BACKUP_CODE_SALT, code.lower(), algorithm="sha256").hexdigest()[
        :BACKUP_CODE_DIGEST_LENGTH
    ]


@transaction.atomic
def twofactor_device_for_code(*, user: User, code: str) -> Device | None:
    """The confirmed device of the user that accepts ``code`` (spaces ignored), or None.

    A TOTP code is accepted once: django-otp remembers the last time step used, and the
    user's device rows are locked (SELECT ... FOR UPDATE, TOTP then backup devices, each in
    primary-key order) until the transaction commits, so the same code sent twice at the
    same instant passes once: the second request waits, then finds the step used. A backup
    code is compared by its digest and deleted when used. Wrong codes count towards
    django-otp's throttling of the device they were checked against.
    """
    code = "".join(code.split()).lower()
    if not code:
        return None
    totp_devices = list(
        TOTPDevice.objects.select_for_update().filter(user=user, confirmed=True).order_by("pk")
    )
    backup_devices = list(
        StaticDevice.objects.select_for_update().filter(user=user, confirmed=True).order_by("pk")
    )
    # Authenticator codes are 6 to 8 digits, backup codes 10 characters: each code is
    # checked against one kind, so a backup code does not slow down the authenticator.
    if code.isdigit() and len(code) < BACKUP_CODE_LENGTH:
        for device in totp_devices:
            if device.verify_token(code):
                return device
        return None
    digest = backup_code_digest(code)
    for static in backup_devices:
        if static.verify_token(digest):
            return static
    return None


def twofactor_verify(*, user: User, code: str) -> bool:
    """Whether ``code`` is a current, unused TOTP code or an unused backup code of the
    user; using it spends it. Safe under concurrency (see twofactor_device_for_code)."""
    return twofactor_device_for_code(user=user, code=code) is not None


def _qr_svg(uri: str) -> str:
    image = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage)
    return str(image.to_string(encoding="unicode"))


@transaction.atomic
def twofactor_setup(*, user: User, password: str | None) -> TwoFactorEnrolment:
    """Start enrolment: a new unconfirmed authenticator, its otpauth URI and QR code.

    Needs the account's password (``current_password_required`` / ``invalid_current_password``,
    400), so a stolen access token cannot enrol the thief's phone. Raises
    ``twofactor_already_enabled`` (409) when 2FA is already on. Calling it again before
    confirming replaces the unconfirmed authenticator.
    """
    current_password_confirm(user=user, password=password)
    if twofactor_enabled(user=user):
        raise ApplicationError(
            "twofactor_already_enabled",
            "Two-step sign-in is already on for this account.",
            "To use a new phone, turn two-step sign-in off with a current code, then set it up again.",
            status_code=409,
        )
    TOTPDevice.objects.filter(user=user, confirmed=False).delete()
    device = TOTPDevice.objects.create(user=user, name=DEVICE_NAME, confirmed=False)
    uri = device.config_url
    return TwoFactorEnrolment(otpauth_uri=uri, qr_svg=_qr_svg(uri))


def _new_backup_codes(*, user: User) -> list[str]:
    StaticDevice.objects.filter(user=user).delete()
    device = StaticDevice.objects.create(user=user, name=BACKUP_DEVICE_NAME, confirmed=True)
    codes = [secrets.token_hex(BACKUP_CODE_BYTES) for _ in range(BACKUP_CODE_COUNT)]
    StaticToken.objects.bulk_create(
        [StaticToken(device=device, token=backup_code_digest(c)) for c in codes]
    )
    return codes


@transaction.atomic
def twofactor_confirm(*, user: User, code: str, client: ClientInfo) -> list[str]:
    """Turn 2FA on with a first code from the new authenticator; returns the backup codes.

    The backup codes are shown this once; only their keyed digests are stored. Raises
    ``twofactor_not_started`` (409) without a setup, ``invalid_otp`` (400) for a wrong code.
    """
    device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=False).last()
    if device is None:
        raise ApplicationError(
            "twofactor_not_started",
            "Two-step sign-in has not been set up yet.",
            "Start with the setup step, scan the QR code, then send the first code.",
            status_code=409,
        )
    if not device.verify_token("".join(code.split())):
        raise ApplicationError(
            "invalid_otp",
            "The code is not correct.",
            "Check the time on your phone is right, then send the code shown now.",
        )
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    codes = _new_backup_codes(user=user)
    audit_record(
        action="twofactor_enabled",
        user=user,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
    )
    return codes


@transaction.atomic
def twofactor_disable(*, user: User, code: str, client: ClientInfo) -> None:
    """Turn 2FA off; needs a current code (or a backup code). Raises ``invalid_otp`` (400)."""
    if not twofactor_enabled(user=user):
        return
    if not twofactor_verify(user=user, code=code):
        raise ApplicationError(
            "invalid_otp",
            "The code is not correct or was already used.",
            "Send the code your authenticator app shows now, or one of your backup codes.",
        )
    TOTPDevice.objects.filter(user=user).delete()
    StaticDevice.objects.filter(user=user).delete()
    audit_record(
        action="twofactor_disabled",
        user=user,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
    )


@transaction.atomic
def twofactor_reset(*, user: User, by: User | None, client: ClientInfo) -> None:
    """An administrator turns 2FA off for a user who lost their phone and backup codes."""
    TOTPDevice.objects.filter(user=user).delete()
    StaticDevice.objects.filter(user=user).delete()
    audit_record(
        action="twofactor_reset",
        user=by,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
        object_type="user",
        object_id=str(user.pk),
    )


def twofactor_backup_codes_left(*, user: User) -> int:
    return StaticToken.objects.filter(device__user=user, device__confirmed=True).count()
