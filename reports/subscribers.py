"""The reports app's view of the domain events; connected in ReportsConfig.ready."""

from __future__ import annotations

from typing import Any

from relaypacs import events

from .services.intake import reports_open_for_upload


def report_on_domain_event(sender: Any, name: str = "", **payload: Any) -> None:
    """``upload.completed``: open the report of each study the PACS confirmed."""
    if name == events.UPLOAD_COMPLETED:
        reports_open_for_upload(upload_id=str(payload.get("upload_id") or ""))
