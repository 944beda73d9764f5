"""Structured logs: one JSON object per line (``LOG_FORMAT=json``), each carrying the id of
the request that led to it and the upload it concerns, also inside the Celery tasks that
request started.

Readable text stays the default (``make run``). Neither format adds patient data: records
carry what the code logs (ids, counts, codes), and the JSON form keeps only the type and
the frames of an exception, not its message (a driver or pydicom message can quote values
of a study).
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest, HttpResponse

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
upload_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("upload_id", default="")

REQUEST_ID_HEADER = "X-Request-ID"
# The message header that carries the request id to the tasks a request starts.
TASK_HEADER = "relaypacs_request_id"
# A client's own X-Request-ID is kept when it looks like an id (a proxy's, a load
# balancer's); anything else gets a new one, so a log line cannot be made to carry text.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
# The record attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_from(given: str) -> str:
    """The id of a request whose X-Request-ID header was ``given``: kept when it looks like
    an id, else a new one."""
    return given if _CLIENT_REQUEST_ID.match(given) else new_request_id()


class ContextFilter(logging.Filter):
    """Adds ``request_id`` and ``upload_id`` from the context to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = request_id_var.get()
        if not getattr(record, "upload_id", ""):
            record.upload_id = upload_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, request_id, upload_id,
    task (in a Celery task), the ``extra=`` fields, and for an exception its type and
    frames (never its message)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "") or request_id_var.get(),
            "upload_id": getattr(record, "upload_id", "") or upload_id_var.get(),
            "process": record.process,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
            entry["stack"] = [
                f"{frame.filename}:{frame.lineno} in {frame.name}"
                for frame in traceback.extract_tb(record.exc_info[2])
            ]
        return json.dumps(entry, ensure_ascii=False, default=str)


def logging_config(*, log_format: str, level: str) -> dict[str, Any]:
    """settings.LOGGING for ``log_format`` "text" or "json"."""
    formatter: dict[str, Any] = (
        {"()": "relaypacs.logging_context.JsonFormatter"}
        if log_format == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": "relaypacs.logging_context.ContextFilter"}},
        "formatters": {"plain": formatter},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "filters": ["context"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        # django-axes logs every sign-in at INFO; failures are in the audit trail already.
        # Django's send_robust logs a failing subscriber's exception text, which may carry
        # values of a study; relaypacs.events logs that subscriber and the error's type.
        "loggers": {
            "pydicom": {"level": "ERROR"},
            "axes": {"level": "WARNING"},
            "django.dispatch": {"level": "CRITICAL"},
        },
    }


def uvicorn_logging_config() -> dict[str, Any]:
    """uvicorn's --log-config with LOG_FORMAT=json: its loggers write the same JSON lines."""
    from django.conf import settings

    config = logging_config(log_format="json", level=settings.LOGGING["root"]["level"])
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        config["loggers"][name] = {"handlers": ["console"], "level": "INFO", "propagate": False}
    return config


class RequestIdMiddleware:
    """Gives each request an id (the client's X-Request-ID when it is one), answers it in
    X-Request-ID, and puts it and the upload id of upload URLs in the logging context."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = request_id_from(request.headers.get(REQUEST_ID_HEADER, ""))
        request_token = request_id_var.set(request_id)
        upload_token = upload_id_var.set("")
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(request_token)
            upload_id_var.reset(upload_token)
        response[REQUEST_ID_HEADER] = request_id
        return response

    def process_view(
        self, request: HttpRequest, view: Any, args: Any, kwargs: dict[str, Any]
    ) -> None:
        if "upload_id" in kwargs:
            upload_id_var.set(str(kwargs["upload_id"]))


# --- Celery ----------------------------------------------------------------------------
def _on_before_task_publish(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    request_id = request_id_var.get()
    if headers is not None and request_id:
        headers.setdefault(TASK_HEADER, request_id)


_task_tokens: dict[str, tuple[contextvars.Token[str], contextvars.Token[str]]] = {}


def _on_task_prerun(
    task_id: str = "", task: Any = None, args: Any = None, kwargs: Any = None, **extra: Any
) -> None:
    request_id = ""
    if task is not None:
        request_id = str(getattr(task.request, TASK_HEADER, None) or "")
        headers = getattr(task.request, "headers", None) or {}
        request_id = request_id or str(headers.get(TASK_HEADER) or "")
    upload_id = str((kwargs or {}).get("upload_id") or "")
    if not upload_id and args:
        first = str(args[0])
        upload_id = first if _looks_like_uuid(first) else ""
    _task_tokens[task_id] = (
        request_id_var.set(request_id or f"task-{task_id}"),
        upload_id_var.set(upload_id),
    )


def _on_task_postrun(task_id: str = "", **kwargs: Any) -> None:
    tokens = _task_tokens.pop(task_id, None)
    if tokens is not None:
        request_id_var.reset(tokens[0])
        upload_id_var.reset(tokens[1])


def _looks_like_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _json_celery_handlers(logger: logging.Logger | None = None, **kwargs: Any) -> None:
    """Celery sets up its own handlers; with LOG_FORMAT=json they write JSON too."""
    from django.conf import settings

    if logger is None or settings.LOG_FORMAT != "json":
        return
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())
        handler.addFilter(ContextFilter())


def celery_logging_connect() -> None:
    """Called by relaypacs.celery in every process that publishes or runs tasks."""
    from celery import signals

    signals.before_task_publish.connect(_on_before_task_publish, weak=False)
    signals.task_prerun.connect(_on_task_prerun, weak=False)
    signals.task_postrun.connect(_on_task_postrun, weak=False)
    signals.after_setup_logger.connect(_json_celery_handlers, weak=False)
    signals.after_setup_task_logger.connect(_json_celery_handlers, weak=False)
