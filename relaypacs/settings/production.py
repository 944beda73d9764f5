"""Production: HTTPS only, secrets and hosts from the environment with no defaults.

Every variable named in REQUIRED must be set (or NAME_FILE pointing to a file holding it,
for secrets mounted by Docker or Kubernetes); a missing one stops start-up with a message
naming it. ``python manage.py check --deploy`` reports nothing with these settings.
"""

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

# TRUSTED_PROXY_COUNT: how many reverse proxies append to X-Forwarded-For; guessing wrong
# either lets clients choose the address their failed sign-ins count against, or counts a
# whole clinic as the proxy's address (0 is a valid answer: no proxy). PUBLIC_BASE_URL:
# where the links in emails point; the development default (localhost) would send users
# links that cannot work.
REQUIRED = ("SECRET_KEY", "ALLOWED_HOSTS", "DATABASE_URL", "TRUSTED_PROXY_COUNT", "PUBLIC_BASE_URL")

for _name in REQUIRED:
    _file = os.environ.get(f"{_name}_FILE")
    if not os.environ.get(_name) and _file:
        # base.py reads SECRET_KEY_FILE itself; the others are read from the file here.
        if _name != "SECRET_KEY":
            os.environ[_name] = Path(_file).read_text().strip()
    elif not os.environ.get(_name):
        raise ImproperlyConfigured(
            f"The environment variable {_name} is not set. Production settings have no "
            f"default for it: set {_name} (or {_name}_FILE) and start again."
        )


BOOLEAN_FALSE_STRINGS = ("false", "off", "no", "n", "0")


def _value_naming_its_variable(get_value):  # type: ignore[no-untyped-def]
    """django-environ's reader, but a value that cannot be read (``PORT=eighty``) stops
    start-up with a sentence naming the variable (the value is not repeated: it may be
    a secret), instead of a bare ValueError."""

    def read(self, var, cast=None, default=environ.Env.NOTSET, parse_default=False):  # type: ignore[no-untyped-def]
        raw = os.environ.get(var)
        if cast is bool and raw is not None:
            # django-environ reads any word it does not know as False: EMAIL_USE_TLS=ture
            # would quietly send mail without TLS.
            word = raw.strip().lower()
            if word and word not in environ.Env.BOOLEAN_TRUE_STRINGS + BOOLEAN_FALSE_STRINGS:
                raise ImproperlyConfigured(
                    f"The environment variable {var} is malformed: it must be true or false. "
                    f"Correct {var} and start again."
                )
        try:
            return get_value(self, var, cast=cast, default=default, parse_default=parse_default)
        except (ValueError, TypeError) as exc:
            kind = {int: "a whole number", float: "a number"}.get(cast, "a valid value")
            raise ImproperlyConfigured(
                f"The environment variable {var} is malformed: it must be {kind}. "
                f"Correct {var} and start again."
            ) from exc

    return read


environ.Env.get_value = _value_naming_its_variable(environ.Env.get_value)


def _check_formats() -> None:
    """Required values whose form can be checked before anything uses them."""
    if not os.environ["TRUSTED_PROXY_COUNT"].strip().isdigit():
        raise ImproperlyConfigured(
            "The environment variable TRUSTED_PROXY_COUNT is malformed: it must be the "
            "number of reverse proxies in front (0, or 1 behind the shipped nginx)."
        )
    public = urlsplit(os.environ["PUBLIC_BASE_URL"])
    if public.scheme not in {"http", "https"} or not public.netloc:
        raise ImproperlyConfigured(
            "The environment variable PUBLIC_BASE_URL is malformed: it must be the address "
            "users open, such as https://relay.example.org."
        )
    database = urlsplit(os.environ["DATABASE_URL"])
    if not database.scheme or database.scheme not in environ.Env.DB_SCHEMES:
        raise ImproperlyConfigured(
            "The environment variable DATABASE_URL is malformed: it must be a database "
            "address such as postgres://user:password@host:5432/relaypacs."
        )


_check_formats()

from .base import *  # noqa: E402,F403
from .base import MIDDLEWARE, env  # noqa: E402
from .csp import PWA_CSP_DIRECTIVES, csp_header_value  # noqa: E402

DEBUG = False
if "*" in ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        "ALLOWED_HOSTS must list this server's host names in production, not '*'."
    )

# --- HTTPS -------------------------------------------------------------------------------
# Behind a TLS-terminating reverse proxy (nginx, Traefik, a load balancer) that sets
# X-Forwarded-Proto: the proxy MUST overwrite that header from clients, or a client could
# claim HTTPS over plain HTTP. See docs/security.md.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
# /api/v1/health and /metrics answer plain HTTP probes and scrapes inside the network.
SECURE_REDIRECT_EXEMPT = [r"^api/v1/health$", r"^metrics$"]
# /metrics needs METRICS_TOKEN (bearer) or a scraper address in METRICS_ALLOWED_IPS.
METRICS_REQUIRE_AUTH = True
SECURE_HSTS_SECONDS = 31536000  # one year, as the HSTS preload list requires
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SECURE = True
CSRF_COOKIE_HTTPONLY = True
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# CORS: none. The PWA is served from this origin, so no cross-origin browser call is
# allowed (no Access-Control-Allow-Origin header is ever sent).

# --- Content Security Policy (django-csp) ------------------------------------------------
# The policy itself is in csp.py; accounts/tests/test_csp_browser.py runs the PWA under it.
MIDDLEWARE = [*MIDDLEWARE, "csp.middleware.CSPMiddleware"]
_directives = dict(PWA_CSP_DIRECTIVES)
_directives["connect-src"] = ["'self'", *env.list("CSP_CONNECT_SRC", default=[])]
CONTENT_SECURITY_POLICY = {
    # Swagger UI renders with an inline script from a CDN; it is documentation, not the app.
    "EXCLUDE_URL_PREFIXES": ["/api/v1/docs/", "/admin/"],
    "DIRECTIVES": _directives,
}

_PWA_CSP_HEADER = csp_header_value(_directives)


def _pwa_page_headers(headers: Any, path: str, url: str) -> None:
    """WhiteNoise answers the PWA's page (index.html at /) before any Django middleware, so
    it sets the same policy on it itself."""
    if path.endswith(".html"):
        headers["Content-Security-Policy"] = _PWA_CSP_HEADER


WHITENOISE_ADD_HEADERS_FUNCTION = _pwa_page_headers

# --- Email ------------------------------------------------------------------------------
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend")

# --- Web Push ---------------------------------------------------------------------------
# The VAPID key comes from the environment (VAPID_PRIVATE_KEY or VAPID_PRIVATE_KEY_FILE):
# every web replica and worker must sign with the key the browsers subscribed with, so
# none makes its own. Without it Web Push is off (the app still notifies while open).
WEB_PUSH_KEYS_FROM_DATA_DIR = False


def _check_web_push() -> None:
    from notifications.vapid import VapidKeyInvalid, private_key_parse, subject_is_valid

    if VAPID_PRIVATE_KEY:
        try:
            private_key_parse(VAPID_PRIVATE_KEY)
        except VapidKeyInvalid as exc:
            raise ImproperlyConfigured(
                f"{exc} Correct VAPID_PRIVATE_KEY and start again."
            ) from None
    if WEB_PUSH_ALLOW_INSECURE_ENDPOINTS:
        raise ImproperlyConfigured(
            "WEB_PUSH_ALLOW_INSECURE_ENDPOINTS is for tests only: it lets the server send "
            "to http and loopback addresses. Remove it from the environment and start again."
        )
    if VAPID_SUBJECT and not subject_is_valid(VAPID_SUBJECT):
        raise ImproperlyConfigured(
            "The environment variable VAPID_SUBJECT is malformed: it must be a mailto: "
            "address or an https:// address without a path, such as "
            "mailto:pacs-admin@example.org. Correct VAPID_SUBJECT and start again."
        )


_check_web_push()
