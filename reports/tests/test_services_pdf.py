"""Report PDFs: the text a reader sees, the PDF/A-3b claim, and no remote fetches."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from accounts.models import Role
from accounts.tests.factories import UserFactory
from reports.models import Letterhead
from reports.services import pdf, transitions

from .factories import ReportFactory

pytestmark = pytest.mark.django_db


def pdf_text(path: Path) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True
    ).stdout


def signed(findings: str, impression: str = "", **report: object):
    radiologist = UserFactory(role=Role.RADIOLOGIST, full_name="Dr Ada Reader")
    report_row = ReportFactory(**report)
    transitions.report_claim(report_id=report_row.pk, actor=radiologist)
    version = transitions.report_sign(
        report_id=report_row.pk, actor=radiologist, findings=findings, impression=impression
    )
    return radiologist, report_row, pdf.report_version_render(version_id=version.pk)


def test_the_pdf_holds_the_letterhead_study_notes_text_signer_and_page_numbers():
    long_findings = "\n".join(f"Line {n} of the findings." for n in range(120))
    _, report, version = signed(long_findings, "Nothing acute.")
    Letterhead.objects.create(facility=report.facility, address="1 Clinic Road\nSmalltown")
    # The letterhead is read when a version is rendered: render a second report of it.
    _, report, version = signed(long_findings, "Nothing acute.", facility=report.facility)
    text = pdf_text(pdf.report_storage_dir() / version.pdf_path)
    for expected in (
        report.facility.name,
        "1 Clinic Road",
        "Synthetic Test",
        "CT chest",
        "Cough for three weeks.",
        "Line 0 of the findings.",
        "Line 119 of the findings.",
        "Nothing acute.",
        "Dr Ada Reader",
        f"Report {report.pk} · version 1",
        "Page 1 of 3",
        "Page 3 of 3",
    ):
        assert expected in text, expected
    assert "AMENDED" not in text


def test_an_amended_pdf_is_marked_with_its_version():
    radiologist, report, _ = signed("Clear lungs.")
    second = transitions.report_amend(
        report_id=report.pk, actor=radiologist, findings="Small nodule.", impression=""
    )
    version = pdf.report_version_render(version_id=second.pk)
    text = pdf_text(pdf.report_storage_dir() / version.pdf_path)
    assert "AMENDED · version 2" in text and "Small nodule." in text


def test_the_pdf_claims_pdf_a_3b_and_embeds_the_shipped_font():
    _, _, version = signed("Clear lungs.")
    path = pdf.report_storage_dir() / version.pdf_path
    assert path.read_bytes().startswith(b"%PDF-")
    xmp = subprocess.run(
        ["pdfinfo", "-meta", str(path)], check=True, capture_output=True, text=True
    ).stdout
    assert re.search(r"<pdfaid:part>3</pdfaid:part>|pdfaid:part=\"3\"", xmp), xmp
    assert re.search(r"<pdfaid:conformance>B</pdfaid:conformance>|pdfaid:conformance=\"B\"", xmp)
    fonts = subprocess.run(
        ["pdffonts", str(pdf.report_storage_dir() / version.pdf_path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = fonts.splitlines()[2:]
    # Only the font shipped in reports/fonts (its family named in the template), embedded.
    assert rows and all("+Report-Sans" in row and " yes yes " in row for row in rows), fonts


def test_the_renderer_refuses_remote_and_foreign_files():
    fetcher = pdf._local_fetcher([pdf.FONTS_DIR])
    for url in ("http://example.org/logo.png", "file:///etc/passwd", "ftp://example.org/x"):
        with pytest.raises(ValueError):
            fetcher.fetch(url)
    assert fetcher.fetch((pdf.FONTS_DIR / "DejaVuSans.ttf").as_uri()) is not None
