"""Filters of the radiologist's pages: DICOM values as people read them."""

from __future__ import annotations

from datetime import date

from django import template

register = template.Library()


@register.filter
def dicom_name(value: str) -> str:
    """A DICOM person name (DOE^JANE^^DR) as "DOE, JANE"; empty parts dropped."""
    parts = [p.strip() for p in (value or "").split("=")[0].split("^")]
    family, given = (parts + ["", ""])[:2]
    rest = " ".join(p for p in parts[2:4] if p)
    names = " ".join(p for p in (given, rest) if p)
    if family and names:
        return f"{family}, {names}"
    return family or names


@register.filter
def dicom_date(value: str) -> str:
    """A DICOM date (YYYYMMDD) as 2025-01-02; anything else as it is."""
    if len(value or "") == 8 and value.isdigit():
        try:
            return date(int(value[:4]), int(value[4:6]), int(value[6:])).isoformat()
        except ValueError:
            return value
    return value or ""


@register.filter
def modalities(value: str) -> str:
    """The report's modalities ("CT\\SR") as "CT, SR"."""
    return ", ".join(code for code in (value or "").split("\\") if code)


@register.filter
def service_level(value: str) -> str:
    """A service level's label ("stat" as "STAT")."""
    from uploads.models import ServiceLevel

    return str(ServiceLevel(value).label) if value in ServiceLevel.values else value
