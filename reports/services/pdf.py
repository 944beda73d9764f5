"""Report PDFs: rendered with WeasyPrint (PDF/A-3b) or kept as the PACS sent them, stored
once in the report store (REPORT_STORAGE_DIR) and never rewritten."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone

from accounts.models import User
from relaypacs.errors import ApplicationError

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
    return Path(settings.REPORT_STORAGE_DIR)


def _local_fetcher(allowed_roots: list[Path]) -> Any:
    """A WeasyPrint URL fetcher that reads the product's fonts and the facility's logo and
    refuses every other URL (no remote fetch, no other local file)."""
    from weasyprint.urls import URLFetcher

    roots = [root.resolve() for root in allowed_roots]

    class LocalOnlyFetcher(URLFetcher):  # type: ignore[misc]
        def fetch(self, url: str, headers: Any = None) -> Any:
            if url.startswith("file://"):
                from urllib.parse import unquote, urlparse

                path = Path(unquote(urlparse(url).path)).resolve()
                if any(path.is_relative_to(root) for root in roots):
                    return super().fetch(url, headers)
            raise ValueError("The report PDF only uses files shipped with RelayPACS.")

    return LocalOnlyFetcher(allowed_protocols=["file"])


def _dicom_date(value: str) -> str:
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def report_pdf_html(*, report: Report, version: ReportVersion) -> str:
    """The HTML a version's PDF is made from (templates/reports/report_pdf.html)."""
    letterhead = (
        Letterhead.objects.filter(facility=report.facility).first() if report.facility else None
    )
    logo_url = ""
    if letterhead is not None and letterhead.logo:
        logo_path = Path(letterhead.logo.path)
        if logo_path.is_file():
            logo_url = logo_path.resolve().as_uri()
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

    html = report_pdf_html(report=report, version=version)
    document = HTML(
        string=html,
        base_url=FONTS_DIR.as_uri() + "/",
        url_fetcher=_local_fetcher([FONTS_DIR, report_storage_dir() / "letterheads"]),
    )
    data: bytes = document.write_pdf(pdf_variant=PDF_VARIANT)
    return data


def _write_once(*, relative: str, data: bytes) -> None:
    """Write ``data`` at ``relative`` in the report store, durably: a crash leaves either
    no file or the whole file.

    Each writer has its own temporary file (in the same folder, so that the rename is
    atomic): two workers writing the same name at once never mix their bytes, and the
    last rename leaves one whole file (the same bytes, as the name holds their digest).
    """
    path = report_storage_dir() / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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
    _write_once(relative=relative, data=data)
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
            (report_storage_dir() / relative).unlink(missing_ok=True)
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

    Audited as an access to the report. Raises ApplicationError 409 when the report has no
    PDF yet and 404 for a version number it does not have.
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
    handle = open(report_storage_dir() / version.pdf_path, "rb")  # noqa: SIM115
    report_audit(
        action="report_accessed",
        report_id=report.pk,
        facility_id=report.facility_id,
        actor=user,
        detail={"version": version.number, "pdf_sha256": version.pdf_sha256},
    )
    return version, handle
