"""Backup codes stored before they were kept as digests are plaintext 10-hex StaticToken
rows, which no longer match any code typed at sign-in. Replace each with its digest.

The digest is computed here rather than imported from accounts.services.twofactor, so this
migration keeps doing what it did when that module changes: HMAC-SHA256 keyed with
SECRET_KEY exactly as django.utils.crypto.salted_hmac does it (key = SHA-256 of the salt
followed by the secret), in hex, cut to 16 characters.
"""

import hashlib
import hmac
import re

from django.conf import settings
from django.db import migrations

_SALT = "relaypacs.backup-code.v1"
_DIGEST_LENGTH = 16
# What a digest looks like; anything else in StaticToken.token is a code stored in clear.
_DIGEST = re.compile(r"[0-9a-f]{16}")
# Rows are updated in batches of this many, so a large table is not held in memory.
_BATCH = 1000


def _digest(code: str) -> str:
    key = hashlib.sha256((_SALT + settings.SECRET_KEY).encode()).digest()
    message = "".join(code.split()).lower().encode()
    return hmac.new(key, msg=message, digestmod=hashlib.sha256).hexdigest()[:_DIGEST_LENGTH]


def backup_codes_to_digests(apps, schema_editor):
    StaticToken = apps.get_model("otp_static", "StaticToken")
    plain = []
    for token in StaticToken.objects.only("pk", "token").order_by("pk").iterator(_BATCH):
        if not _DIGEST.fullmatch(token.token):
            token.token = _digest(token.token)
            plain.append(token)
        if len(plain) >= _BATCH:
            StaticToken.objects.bulk_update(plain, ["token"])
            plain = []
    StaticToken.objects.bulk_update(plain, ["token"])


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_sessions_audit_preferences"),
        ("otp_static", "0003_add_timestamps"),
    ]

    operations = [
        # Backwards: the digests stay (a code in clear cannot be recovered from them).
        migrations.RunPython(backup_codes_to_digests, migrations.RunPython.noop),
    ]
