"""Two-step sign-in (TOTP) with django-otp: enrol, confirm, verify, backup codes, disable."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from datetime import datetime

import qrcode
import qrcode.image.svg
from django.db import transaction
from django.utils import timezone
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


@dataclass(frozen=True)
class CodeCheck:
    """What checking a two-step code found: the device that accepted it, or None.

    ``locked_until`` is set when every device the code could be checked against is still
    waiting out django-otp's delay after wrong codes (1 s, 2 s, 4 s...): the code was not
    checked at all, and may be sent again from that moment.
    """

    device: Device | None
    locked_until: datetime | None = None


@transaction.atomic
def twofactor_code_check(*, user: User, code: str) -> CodeCheck:
    """Check ``code`` (spaces ignored) against the user's confirmed devices.

    A TOTP code is accepted once: django-otp remembers the last time step used, and the
    user's device rows are locked (SELECT ... FOR UPDATE, TOTP then backup devices, each in
    primary-key order) until the transaction commits, so the same code sent twice at the
    same instant passes once: the second request waits, then finds the step used. A backup
    code is compared by its digest and deleted when used. Wrong codes count towards
    django-otp's throttling of the device they were checked against; that count is written
    in this transaction, so a caller must not roll it back (raise its error after this
    returns, outside any transaction of its own).
    """
    code = "".join(code.split()).lower()
    if not code:
        return CodeCheck(device=None)
    totp_devices = list(
        TOTPDevice.objects.select_for_update().filter(user=user, confirmed=True).order_by("pk")
    )
    backup_devices = list(
        StaticDevice.objects.select_for_update().filter(user=user, confirmed=True).order_by("pk")
    )
    # Authenticator codes are 6 to 8 digits, backup codes 10 characters: each code is
    # checked against one kind, so a backup code does not slow down the authenticator.
    if code.isdigit() and len(code) < BACKUP_CODE_LENGTH:
        candidates: list[Device] = list(totp_devices)
        token = code
    else:
        candidates = list(backup_devices)
        token = backup_code_digest(code)
    locks = [_locked_until(device) for device in candidates]
    if candidates and all(lock is not None for lock in locks):
        return CodeCheck(device=None, locked_until=min(lock for lock in locks if lock))
    for device in candidates:
        if device.verify_token(token):
            return CodeCheck(device=device)
    return CodeCheck(device=None)


def _locked_until(device: Device) -> datetime | None:
    allowed, data = device.verify_is_allowed()
    if allowed:
        return None
    locked_until = (data or {}).get("locked_until")
    return locked_until if isinstance(locked_until, datetime) else timezone.now()


def twofactor_device_for_code(*, user: User, code: str) -> Device | None:
    """The confirmed device of the user that accepts ``code``, or None (also while the
    devices wait out the delay after wrong codes). See twofactor_code_check."""
    return twofactor_code_check(user=user, code=code).device


def twofactor_verify(*, user: User, code: str) -> bool:
    """Whether ``code`` is a current, unused TOTP code or an unused backup code of the
    user; using it spends it. Safe under concurrency (see twofactor_code_check)."""
    return twofactor_device_for_code(user=user, code=code) is not None


def otp_throttled_error(*, locked_until: datetime, status_code: int = 400) -> ApplicationError:
    """The answer while django-otp makes the user wait after wrong codes."""
    seconds = max(1, math.ceil((locked_until - timezone.now()).total_seconds()))
    return ApplicationError(
        "otp_throttled",
        "Too many wrong codes were tried, so two-step codes are paused for a moment. "
        "The code you sent was not checked.",
        f"Wait {seconds} seconds, then send the code your authenticator app shows at that "
        "time (or a backup code).",
        status_code=status_code,
    )


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


def twofactor_confirm(*, user: User, code: str, client: ClientInfo) -> list[str]:
    """Turn 2FA on with a first code from the new authenticator; returns the backup codes.

    The backup codes are shown this once; only their keyed digests are stored. Raises
    ``twofactor_not_started`` (409) without a setup, ``invalid_otp`` (400) for a wrong code,
    ``otp_throttled`` (400) while django-otp makes the user wait after wrong codes. A wrong
    code's failure count is committed before the error is raised, so codes cannot be
    guessed at full speed. Must not run inside a caller's transaction (that would roll the
    count back with the error).
    """
    outcome = _twofactor_confirm_locked(user=user, code=code, client=client)
    if isinstance(outcome, ApplicationError):
        raise outcome
    return outcome


@transaction.atomic
def _twofactor_confirm_locked(
    *, user: User, code: str, client: ClientInfo
) -> list[str] | ApplicationError:
    # Errors are returned, not raised, so this transaction commits django-otp's count.
    device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=False).last()
    if device is None:
        return ApplicationError(
            "twofactor_not_started",
            "Two-step sign-in has not been set up yet.",
            "Start with the setup step, scan the QR code, then send the first code.",
            status_code=409,
        )
    locked_until = _locked_until(device)
    if locked_until is not None:
        return otp_throttled_error(locked_until=locked_until)
    if not device.verify_token("".join(code.split())):
        return ApplicationError(
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


def twofactor_disable(*, user: User, code: str, client: ClientInfo) -> None:
    """Turn 2FA off; needs a current code (or a backup code). Idempotent when it is off.

    Raises ``invalid_otp`` (400) for a wrong or used code and ``otp_throttled`` (400) while
    django-otp makes the user wait after wrong codes. The failure count of a wrong code is
    committed before the error is raised; must not run inside a caller's transaction.
    """
    error = _twofactor_disable_locked(user=user, code=code, client=client)
    if error is not None:
        raise error


@transaction.atomic
def _twofactor_disable_locked(
    *, user: User, code: str, client: ClientInfo
) -> ApplicationError | None:
    # Errors are returned, not raised, so this transaction commits django-otp's count.
    if not twofactor_enabled(user=user):
        return None
    check = twofactor_code_check(user=user, code=code)
    if check.locked_until is not None:
        return otp_throttled_error(locked_until=check.locked_until)
    if check.device is None:
        return ApplicationError(
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
    return None


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
