"""Re-authentication: sensitive changes of a signed-in account need its password again."""

from __future__ import annotations

from relaypacs.errors import ApplicationError

from ..models import User


def current_password_confirm(*, user: User, password: str | None) -> None:
    """Check that the person at the keyboard knows the account's password.

    A stolen access token (an unlocked PC left signed in) must not be enough to take the
    account over by changing its email or enrolling the thief's authenticator. Raises
    ``current_password_required`` (400) when none was sent and ``invalid_current_password``
    (400, the code of the password change) when it is wrong.
    """
    if not password:
        raise ApplicationError(
            "current_password_required",
            "For this change your current password is needed.",
            "Type the password you signed in with in the 'current password' field and send again.",
        )
    if not user.check_password(password):
        raise ApplicationError(
            "invalid_current_password",
            "The current password is not correct.",
            "Type the password you signed in with; if you forgot it, use 'Forgot password'.",
        )
