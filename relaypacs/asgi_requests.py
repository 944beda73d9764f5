"""What the lean ASGI endpoints in front of Django (uploads/chunk_endpoint.py,
notifications/sse_endpoint.py) read of a request exactly as Django would: its headers, whether
it came over HTTPS, whether its host is allowed; and the headers SecurityMiddleware adds."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http.request import split_domain_port, validate_host

Scope = dict[str, Any]


def request_headers(scope: Scope) -> dict[bytes, bytes]:
    """Request headers by lower-case name; repeated ones joined with commas, as Django does."""
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        name = name.lower()
        headers[name] = headers[name] + b"," + value if name in headers else value
    return headers


def request_is_secure(scope: Scope, headers: dict[bytes, bytes]) -> bool:
    """As Django's ``request.is_secure()``: the trusted proxy's header when it is present
    (its first value decides), else the connection's scheme."""
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        name, value = proxy
        header = headers.get(name.removeprefix("HTTP_").replace("_", "-").lower().encode())
        if header is not None:
            return header.decode("latin-1").split(",", 1)[0].strip() == value
    return scope.get("scheme") == "https"


def request_host_allowed(headers: dict[bytes, bytes]) -> bool:
    """As Django's ``request.get_host()``: the host checked against ALLOWED_HOSTS."""
    forwarded = headers.get(b"x-forwarded-host") if settings.USE_X_FORWARDED_HOST else None
    host = (forwarded if forwarded is not None else headers.get(b"host", b"")).decode("latin-1")
    domain, _port = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return bool(domain) and validate_host(domain, allowed)


def security_middleware_headers(*, secure: bool) -> list[tuple[bytes, bytes]]:
    """Referrer-Policy, Cross-Origin-Opener-Policy and (over HTTPS) Strict-Transport-Security,
    as Django's SecurityMiddleware adds them to a response."""
    headers: list[tuple[bytes, bytes]] = []
    if settings.SECURE_REFERRER_POLICY:
        policy = settings.SECURE_REFERRER_POLICY
        if not isinstance(policy, str):
            policy = ",".join(policy)
        headers.append((b"referrer-policy", policy.encode()))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append(
            (b"cross-origin-opener-policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode())
        )
    if secure and settings.SECURE_HSTS_SECONDS:
        hsts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            hsts += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            hsts += "; preload"
        headers.append((b"strict-transport-security", hsts.encode()))
    return headers
