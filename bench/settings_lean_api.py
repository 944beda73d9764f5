"""Benchmark variant: the embedded default with only the middleware the upload API uses.

The API authenticates with bearer tokens in DRF, so sessions, CSRF, messages, the auth
middleware and clickjacking headers do nothing for a chunk PUT but cost time on each of
them. Started with ``DJANGO_SETTINGS_MODULE=bench.settings_lean_api``; it breaks the
admin, so it only shows what that middleware costs per chunk.
"""

from relaypacs.settings.dev import *  # noqa: F403

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
