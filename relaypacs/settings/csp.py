"""The Content Security Policy of the PWA, as data (used by production settings and tests).

What the PWA needs: its own scripts, styles, web worker and service worker; images and
previews as data: and blob: URLs; the API and WebSocket on its own origin.
"""

PWA_CSP_DIRECTIVES: dict[str, list[str] | bool] = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:", "blob:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "worker-src": ["'self'", "blob:"],
    "manifest-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
    "upgrade-insecure-requests": True,
}


def csp_header_value(directives: dict[str, list[str] | bool]) -> str:
    """The header text of a directives mapping (as django-csp writes it)."""
    parts = []
    for name, value in directives.items():
        if value is True:
            parts.append(name)
        elif value:
            parts.append(f"{name} {' '.join(value)}")  # type: ignore[arg-type]
    return "; ".join(parts)
