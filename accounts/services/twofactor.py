"""Two-step sign-in (TOTP) with django-otp: enrol, confirm, verify, backup codes, disable."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import qrcode
import qrcode.image.svg
from django.db import transaction
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from relaypacs.errors import ApplicationError

from ..clientinfo import ClientInfo
from ..models import User
from .audit import audit_record

BACKUP_CODE_COUNT = 10
DEVICE_NAME = "authenticator"
BACKUP_DEVICE_NAME = "backup"


@dataclass(frozen=True)
class TwoFactorEnrolment:
    otpauth_uri: str
    qr_svg: str


def twofactor_enabled(*, user: User) -> bool:
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def twofactor_verify(*, user: User, code: str) -> bool:
    """Whether ``code`` is a current TOTP code or an unused backup code of the user.

    A TOTP code is accepted once (django-otp remembers the last time step used); a backup
    code is deleted when used. Codes are accepted with or without spaces.
    """
    code = "".join(code.split())
    if not code:
        return False
    for device in TOTPDevice.objects.filter(user=user, confirmed=True):
        if device.verify_token(code):
            return True
    for static in StaticDevice.objects.filter(user=user, confirmed=True):
        if static.verify_token(code.lower()):
            return True
    return False


def _qr_svg(uri: str) -> str:
    image = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage)
    return str(image.to_string(encoding="unicode"))


@transaction.atomic
def twofactor_setup(*, user: User) -> TwoFactorEnrolment:
    """Start enrolment: a new unconfirmed authenticator, its otpauth URI and QR code.

    Raises ``twofactor_already_enabled`` (409) when 2FA is already on. Calling it again
    before confirming replaces the unconfirmed authenticator.
    """
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
    codes = [secrets.token_hex(5) for _ in range(BACKUP_CODE_COUNT)]
    StaticToken.objects.bulk_create([StaticToken(device=device, token=c) for c in codes])
    return codes


@transaction.atomic
def twofactor_confirm(*, user: User, code: str, client: ClientInfo) -> list[str]:
    """Turn 2FA on with a first code from the new authenticator; returns the backup codes.

    The backup codes are shown this once; only their use is stored. Raises
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
