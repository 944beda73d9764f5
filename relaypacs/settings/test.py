"""Test settings: PostgreSQL and Redis as on CI, fast password hashing."""

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/7")

from .base import *  # noqa: E402,F403
from .base import env  # noqa: E402

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
UPLOAD_FSYNC = env.bool("UPLOAD_FSYNC", default=False)
# Connections of the lean chunk endpoint close after each request, so that no thread keeps
# the test database open when it is dropped.
CHUNK_DB_CONN_MAX_AGE = 0
# Upload tokens are checked against their session on every request (tests revoke them).
UPLOAD_TOKEN_RECHECK_SECONDS = 0
# Each test process keeps its own rate-limit counters (tests clear them).
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
