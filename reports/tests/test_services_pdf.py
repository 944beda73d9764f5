"""Report PDFs: the text a reader sees, the PDF/A-3b claim, and no remote fetches."""

from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import Role
from accounts.tests.factories import UserFactory
from reports.models import Letterhead, ReportStatus, ReportVersion
from reports.services import pdf, sync, transitions

from .factories import ReportFactory

pytestmark = pytest.mark.django_db


def pdf_text(path: Path) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True
    ).stdout


def signed_unrendered(findings: str, impression: str = "", **report: object):
    radiologist = UserFactory(role=Role.RADIOLOGIST, full_name="Dr Ada Reader")
    report_row = ReportFactory(**report)
    transitions.report_claim(report_id=report_row.pk, actor=radiologist)
    version = transitions.report_sign(
        report_id=report_row.pk, actor=radiologist, findings=findings, impression=impression
    )
    return radiologist, report_row, version


def signed(findings: str, impression: str = "", **report: object):
    radiologist, report_row, version = signed_unrendered(findings, impression, **report)
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


def _waiting_on_locks() -> int:
    """Backends of this test database waiting for a lock (now, not as this transaction
    first saw pg_stat_activity)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_two_overlapping_renders_of_one_version_keep_its_pdf(api_for):
    # The state report_sign leaves, made without dispatching its render task (this test
    # commits, and the session's worker would otherwise be a third renderer).
    report = ReportFactory(status=ReportStatus.PENDING, signing=True)
    version = ReportVersion.objects.create(
        report=report,
        number=1,
        source="relay",
        findings="Clear lungs.",
        signed_by_name="Dr Ada Reader",
        signed_at=timezone.now(),
    )
    failures: list[BaseException] = []

    def render() -> None:
        try:
            pdf.report_version_render(version_id=version.pk)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            failures.append(exc)
        finally:
            connection.close()  # this thread's own connection

    # Both renderers read the version (no PDF yet), render and write their file, then
    # queue on the row lock held here: the first to get it stores the PDF, the second
    # finds it stored. Without the lock, which of them wins the race would be luck.
    with transaction.atomic():
        ReportVersion.objects.select_for_update().get(pk=version.pk)
        threads = [threading.Thread(target=render) for _ in range(2)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while _waiting_on_locks() < 2:
            assert time.monotonic() < deadline, "the renders never reached the database"
            assert all(t.is_alive() for t in threads), failures
            time.sleep(0.05)
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    version.refresh_from_db()
    report.refresh_from_db()
    assert report.status == ReportStatus.READY
    stored = pdf.report_storage_dir() / version.pdf_path
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == version.pdf_sha256
    # Nothing else left beside it (no temporary file, no second copy).
    assert [p.name for p in stored.parent.iterdir()] == [stored.name]
    response = api_for(report.sender).get(f"/api/v1/reports/{report.pk}/download")
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == stored.read_bytes()


def test_a_lost_render_is_dispatched_again_after_the_grace_and_a_bounded_number_of_times(
    caplog,
):
    _, _, version = signed_unrendered("Clear lungs.")
    assert sync.reports_pdf_redispatch() == 0  # its task was dispatched just now
    long_ago = timezone.now() - sync.RENDER_GRACE - timedelta(minutes=1)
    ReportVersion.objects.filter(pk=version.pk).update(
        signed_at=long_ago, render_dispatched_at=long_ago
    )
    assert sync.reports_pdf_redispatch() == 1
    assert sync.reports_pdf_redispatch() == 0  # not again at every cycle
    for _ in range(sync.RENDER_MAX_ATTEMPTS - 2):
        ReportVersion.objects.filter(pk=version.pk).update(render_dispatched_at=long_ago)
        assert sync.reports_pdf_redispatch() == 1
    attempts = ReportVersion.objects.values_list("render_attempts", flat=True).get(pk=version.pk)
    assert attempts == sync.RENDER_MAX_ATTEMPTS
    with caplog.at_level(logging.ERROR, logger="reports.services.sync"):
        for _ in range(2):
            ReportVersion.objects.filter(pk=version.pk).update(render_dispatched_at=long_ago)
            assert sync.reports_pdf_redispatch() == 0  # given up, said once
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and f"version {version.pk}" in errors[0].getMessage()
