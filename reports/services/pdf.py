"""Report PDFs: rendered with WeasyPrint (PDF/A-3b) or kept as the PACS sent them, stored
once in the report store (reports.store: REPORT_STORAGE_DIR, or the bucket's ``reports/``
prefix in S3 mode) and never rewritten."""

from __future__ import annotations

import base64
import hashlib
import logging
import mimetypes
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from accounts.models import User
from relaypacs.errors import ApplicationError

from .. import store
from ..models import Letterhead, Report, ReportSource, ReportVersion
from .audit import report_audit
from .transitions import report_pdf_stored

logger = logging.getLogger(__name__)
# WeasyPrint logs each rendering step at INFO; only its warnings belong in our logs.
logging.getLogger("weasyprint.progress").setLevel(logging.WARNING)

FONTS_DIR = Path(__file__).resolve().parent.parent / "fonts"
# Hospitals archive reports: PDF/A-3b is the archival profile that also allows attachments.
PDF_VARIANT = "pdf/a-3b"
_SERVICE_LEVEL_LABELS = {
    "routine": "Routine",
    "urgent": "Urgent",
    "emergency": "Emergency",
    "stat": "STAT",
}


def report_storage_dir() -> Path:
    """The local report store's folder (REPORT_STORAGE_DIR; unused in S3 mode)."""
    return Path(settings.REPORT_STORAGE_DIR)


def _local_fetcher(allowed_roots: list[Path], *, data_urls: tuple[str, ...] = ()) -> Any:
    """A WeasyPrint URL fetcher that reads the product's fonts (files under
    ``allowed_roots``) and the facility's logo (one of ``data_urls``, made from the report
    store's bytes) and refuses every other URL (no remote fetch, no other local file, no
    other data: URL)."""
    from weasyprint.urls import URLFetcher

    roots = [root.resolve() for root in allowed_roots]
    allowed_data = frozenset(data_urls)

    class LocalOnlyFetcher(URLFetcher):  # type: ignore[misc]
        def fetch(self, url: str, headers: Any = None) -> Any:
            if url in allowed_data:
                return super().fetch(url, headers)
            if url.startswith("file://"):
                from urllib.parse import unquote, urlparse

                path = Path(unquote(urlparse(url).path)).resolve()
                if any(path.is_relative_to(root) for root in roots):
                    return super().fetch(url, headers)
            raise ValueError("The report PDF only uses files shipped with RelayPACS.")

    return LocalOnlyFetcher(allowed_protocols=["file", "data"])


def _dicom_date(value: str) -> str:
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def _letterhead(report: Report) -> Letterhead | None:
    if report.facility is None:
        return None
    return Letterhead.objects.filter(facility=report.facility).first()


def _logo_data_url(letterhead: Letterhead | None) -> str:
    """The letterhead's logo as a data: URL read from the report store ("" without one).

    Read through the store on every backend, so that the renderer never opens a path of
    the store nor fetches a URL. A logo that is missing from the store is left out (the
    report is still worth its PDF). Raises ReportStoreUnavailable (the render is retried).
    """
    if letterhead is None or not letterhead.logo or not letterhead.logo.name:
        return ""
    name = letterhead.logo.name
    try:
        # A logo is a small image that WeasyPrint holds decoded in memory anyway.
        with letterhead.logo.storage.open(name) as handle:
            data = handle.read()
    except FileNotFoundError:
        logger.warning("letterhead %s: its logo is missing from the report store", letterhead.pk)
        return ""
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


def report_pdf_html(*, report: Report, version: ReportVersion, logo_url: str | None = None) -> str:
    """The HTML a version's PDF is made from (templates/reports/report_pdf.html);
    ``logo_url`` is the letterhead logo's data: URL (read from the store when None)."""
    letterhead = _letterhead(report)
    if logo_url is None:
        logo_url = _logo_data_url(letterhead)
    context = {
        "report": report,
        "version": version,
        "amended": version.number > 1,
        "from_pacs": version.source != ReportSource.RELAY,
        "facility_name": report.facility.name if report.facility else "RelayPACS",
        "address": letterhead.address if letterhead else "",
        "logo_url": logo_url,
        # DICOM person names separate their parts with "^".
        "patient_name": " ".join(report.patient_name.replace("^", " ").split()),
        "birth_date": _dicom_date(report.patient_birth_date),
        "study_date": _dicom_date(report.study_date),
        "modality": report.modality.replace("\\", ", "),
        "service_level": _SERVICE_LEVEL_LABELS.get(report.service_level, report.service_level),
    }
    return render_to_string("reports/report_pdf.html", context)


def report_pdf_bytes(*, report: Report, version: ReportVersion) -> bytes:
    """Render a version as PDF/A-3b with the fonts shipped in reports/fonts."""
    from PIL import ImageFile
    from weasyprint import HTML

    # Importing WeasyPrint turns on Pillow's decoding of truncated images for the whole
    # process; the upload pipeline in the same worker relies on damaged photos failing.
    ImageFile.LOAD_TRUNCATED_IMAGES = False

    logo_url = _logo_data_url(_letterhead(report))
    html = report_pdf_html(report=report, version=version, logo_url=logo_url)
    document = HTML(
        string=html,
        base_url=FONTS_DIR.as_uri() + "/",
        url_fetcher=_local_fetcher([FONTS_DIR], data_urls=(logo_url,) if logo_url else ()),
    )
    data: bytes = document.write_pdf(pdf_variant=PDF_VARIANT)
    return data


def _pdf_attach(*, version: ReportVersion, data: bytes) -> ReportVersion:
    """Store the version's PDF (once) and make the report ``ready``/``amended``; must run
    in a transaction.

    Idempotent: a version that already has its PDF (stored by an earlier or a concurrent
    run, whose transaction also finished the report) keeps it and changes nothing else; in
    particular a late task for an earlier version never finishes a later one's signing.
    """
    if version.pdf_path:
        logger.info("report %s version %s: PDF already stored", version.report_id, version.number)
        return version
    sha256 = hashlib.sha256(data).hexdigest()
    # The digest in the name: a renderer never overwrites another version's file, and
    # two renders of one version (byte-identical) write the same name.
    relative = f"{version.report_id}/v{version.number}-{sha256[:16]}.pdf"
    # Write-once in the store: two renders racing on one name store the same bytes once.
    store.write_once(relative=relative, data=data)
    stored = ReportVersion.objects.filter(pk=version.pk, pdf_path="").update(
        pdf_path=relative,
        pdf_sha256=sha256,
        pdf_size=len(data),
        pdf_stored_at=timezone.now(),
    )
    version = ReportVersion.objects.select_related("signed_by").get(pk=version.pk)
    if stored != 1:
        # Another run stored it first. Its file may be this very path (the same bytes):
        # only a file the database does not point at is ours to remove.
        if version.pdf_path != relative:
            store.delete(relative=relative)
        logger.info("report %s version %s: PDF already stored", version.report_id, version.number)
        return version
    try:
        report_pdf_stored(version=version)
    except ApplicationError as exc:
        if exc.code != "report_state_conflict":
            raise
        logger.info("report %s version %s: already final", version.report_id, version.number)
    return version


def report_version_render(*, version_id: int) -> ReportVersion:
    """Render and store the PDF of a signed version, then make the report ready.

    Idempotent (safe to run twice, e.g. when a worker died mid-way).
    """
    version = ReportVersion.objects.select_related("report__facility", "signed_by").get(
        pk=version_id
    )
    data = b"" if version.pdf_path else report_pdf_bytes(report=version.report, version=version)
    with transaction.atomic():
        return _pdf_attach(version=version, data=data)


def report_version_pdf_keep(*, version_id: int, data: bytes) -> ReportVersion:
    """Store a PDF received from the PACS as it is, then make the report ready."""
    version = ReportVersion.objects.select_related("signed_by").get(pk=version_id)
    with transaction.atomic():
        return _pdf_attach(version=version, data=data)


def report_pdf_open(
    *, report: Report, number: int | None, user: User
) -> tuple[ReportVersion, IO[bytes]]:
    """The stored PDF of the current version (or of version ``number``), opened for reading.

    Streamed from the report store (S3 mode: from the bucket, in blocks). Audited as an
    access to the report. Raises ApplicationError 409 when the report has no PDF yet, 404
    for a version number it does not have, 503 when the store cannot be reached and 500
    when the PDF is missing from it.
    """
    from django.http import Http404

    versions = ReportVersion.objects.filter(report=report).exclude(pdf_path="")
    if number is not None:
        version = versions.filter(number=number).first()
        if version is None:
            raise Http404
    else:
        version = versions.filter(superseded=False).order_by("-number").first()
        if version is None:
            raise ApplicationError(
                "report_not_ready",
                "This report has no PDF yet: it has not been signed.",
                "You will be able to download it once the radiologist has signed it.",
                status_code=409,
            )
    try:
        handle = store.open(relative=version.pdf_path)
    except FileNotFoundError:
        logger.error("report %s version %s: PDF missing from the store", report.pk, version.number)
        raise ApplicationError(
            "report_pdf_missing",
            "The PDF of this report is missing from the report store.",
            "Tell your RelayPACS administrator: the report store may need restoring from a backup.",
            status_code=500,
        ) from None
    except store.ReportStoreUnavailable:
        logger.error("report %s: the report store cannot be reached", report.pk)
        raise ApplicationError(
            "report_store_unavailable",
            "The server could not reach its report store just now, so the PDF cannot be "
            "downloaded.",
            "Try again in a minute; tell your RelayPACS administrator if this keeps happening.",
            status_code=503,
        ) from None
    report_audit(
        action="report_accessed",
        report_id=report.pk,
        facility_id=report.facility_id,
        actor=user,
        detail={"version": version.number, "pdf_sha256": version.pdf_sha256},
    )
    return version, handle
