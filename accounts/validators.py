"""The project's own password rule, beside Django's validators (see AUTH_PASSWORD_VALIDATORS)."""

from __future__ import annotations

import string
from typing import Any

from django.core.exceptions import ValidationError

# Three of the four kinds: long passphrases of words and a number or sign pass, "aaaaaaaaaaaa" not.
REQUIRED_CLASSES = 3


class CharacterClassesValidator:
    """At least three of: lower-case letters, capitals, digits, other signs."""

    def validate(self, password: str, user: Any = None) -> None:
        classes = [
            any(c.islower() for c in password),
            any(c.isupper() for c in password),
            any(c.isdigit() for c in password),
            any(not c.isalnum() or c in string.punctuation for c in password),
        ]
        if sum(classes) < REQUIRED_CLASSES:
            raise ValidationError(
                "This password needs at least three of these: small letters, capital letters, "
                "digits, and other signs such as spaces or punctuation.",
                code="password_too_simple",
            )

    def get_help_text(self) -> str:
        return (
            "Your password must contain at least three of: small letters, capital letters, "
            "digits, other signs."
        )
