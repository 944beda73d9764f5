"""Error reports to Sentry (sentry-sdk, Django and Celery), enabled by ``SENTRY_DSN``, and
the scrubber that keeps patient data out of them.

What leaves: the exception's type, its stack (file, line, function and source lines of the
product's and libraries' code), the URL pattern or task name, the release and environment,
and breadcrumbs of what the code logged (the product logs ids, counts and codes only).

What never leaves (``scrub_event``/``scrub_breadcrumb``): exception messages (a pydicom or
driver message can quote a patient's name or a file's name), local variables' values,
request bodies, cookies and query strings, headers other than a few harmless ones, SQL
breadcrumbs (their parameters are column values), and any value under a key that names a
patient, a person, a file, a path or an archive entry, or that looks like a DICOM person
name or a file path.
"""

from __future__ import annotations

import re
from typing import Any

FILTERED = "[Filtered]"
# Keys whose values are patient data or name people, files or archive entries.
_SENSITIVE_KEY = re.compile(
    r"patient|name|birth|physician|accession|institution|file|path|entry|entries|archive|"
    r"body|data|cookie|password|secret|token|authorization|note|comment|address|email",
    re.IGNORECASE,
)
# A DICOM person name (FAMILY^GIVEN) or something like a file path or a file name.
_LOOKS_SENSITIVE = re.compile(r"\^|[\\/][^\s]*[\\/]|\.(dcm|zip|rar|jpe?g|png|pdf|tar|gz)\b", re.I)
_HEADERS_KEPT = {"user-agent", "content-type", "content-length", "x-request-id", "host"}
_DROPPED_BREADCRUMB_CATEGORIES = {"query", "subprocess"}


def _scrub_value(value: Any, *, depth: int = 0) -> Any:
    if depth > 10:
        return FILTERED
    if isinstance(value, dict):
        return {
            key: FILTERED
            if isinstance(key, str) and _SENSITIVE_KEY.search(key)
            else _scrub_value(item, depth=depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_scrub_value(item, depth=depth + 1) for item in value]
    if isinstance(value, str) and _LOOKS_SENSITIVE.search(value):
        return FILTERED
    return value


def _scrub_exception(exception: dict[str, Any]) -> None:
    for item in exception.get("values") or []:
        if item.get("value"):
            item["value"] = FILTERED
        for frame in (item.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)


def _scrub_request(request: dict[str, Any]) -> None:
    for key in ("data", "cookies", "query_string", "env"):
        request.pop(key, None)
    if isinstance(request.get("url"), str):
        request["url"] = request["url"].split("?", 1)[0]
    headers = request.get("headers")
    if isinstance(headers, dict):
        request["headers"] = {k: v for k, v in headers.items() if k.lower() in _HEADERS_KEPT}


def scrub_event(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sentry's ``before_send``: the event without patient data (see the module docstring)."""
    if isinstance(event.get("exception"), dict):
        _scrub_exception(event["exception"])
    for thread in (event.get("threads") or {}).get("values") or []:
        for frame in (thread.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)
    if isinstance(event.get("request"), dict):
        _scrub_request(event["request"])
    logentry = event.get("logentry")
    if isinstance(logentry, dict):
        # The message as the code wrote it, without the values formatted into it.
        logentry.pop("params", None)
        if logentry.get("formatted") and logentry.get("message"):
            logentry["formatted"] = logentry["message"]
    for key in ("extra", "contexts", "tags"):
        if isinstance(event.get(key), dict):
            event[key] = _scrub_value(event[key])
    event.pop("user", None)
    crumbs = event.get("breadcrumbs")
    if isinstance(crumbs, dict):
        crumbs["values"] = [
            kept for crumb in crumbs.get("values") or [] if (kept := scrub_breadcrumb(crumb))
        ]
    return event


def scrub_transaction(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """``before_send_transaction`` (SENTRY_TRACES_SAMPLE_RATE above 0): the request and
    breadcrumbs scrubbed as in errors; spans keep their operation and timing, not their
    SQL, URLs or data."""
    event = scrub_event(event, hint)
    for span in event.get("spans") or []:
        span.pop("data", None)
        span["description"] = span.get("op") or ""
    return event


def scrub_breadcrumb(
    crumb: dict[str, Any], hint: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Sentry's ``before_breadcrumb``: SQL dropped, values under sensitive keys removed."""
    if crumb.get("category") in _DROPPED_BREADCRUMB_CATEGORIES:
        return None
    if isinstance(crumb.get("data"), dict):
        crumb["data"] = _scrub_value(crumb["data"])
    message = crumb.get("message")
    if isinstance(message, str) and _LOOKS_SENSITIVE.search(message):
        crumb["message"] = FILTERED
    return crumb


def sentry_init(*, dsn: str, environment: str, release: str, traces_sample_rate: float) -> None:
    """Start sentry-sdk for Django and Celery with the scrubber; nothing when ``dsn`` is empty."""
    if not dsn:
        return
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release or None,
        integrations=[DjangoIntegration(), CeleryIntegration()],
        # send_default_pii stays at its default (off): no user, address or cookies.
        # Request bodies carry manifests (file names) and chunks (patient data): never sent.
        max_request_body_size="never",
        # Frames keep their code; the scrubber removes whatever locals reach the event.
        include_local_variables=False,
        before_send=scrub_event,  # type: ignore[arg-type]
        before_send_transaction=scrub_transaction,  # type: ignore[arg-type]
        before_breadcrumb=scrub_breadcrumb,  # type: ignore[arg-type]
        traces_sample_rate=traces_sample_rate,
    )
