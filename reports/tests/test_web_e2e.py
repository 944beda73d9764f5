"""The radiologist's pages in Debian's Chromium (Playwright) against the product as
`make run` starts it (`manage.py serve`: uvicorn, a real Celery worker and beat, SQLite)
with the session's test Orthanc as the PACS.

A clinic sends three studies through the upload API (routine, STAT, urgent); a
radiologist signs in with a TOTP code, sees STAT first (standing out), claims it, writes,
signs, waits for the worker's PDF and downloads it. The screenshots of docs/screenshots/
(reports-worklist-*.png, reports-report-*.png, at 1366×768 and 820×1180) are taken here.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from uploads.tests.helpers import HttpUploader
from uploads.tests.product import REPO, RunningProduct, manage, running_product, totp_now
from uploads.tests.synthetic import ROOT, write_instance

pytestmark = pytest.mark.e2e

SCREENSHOTS = REPO / "docs" / "screenshots"
# A page that fits its window's width (a wide table scrolls inside its own box).
NO_SIDEWAYS_SCROLL = "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu"]
DESKTOP = {"width": 1366, "height": 768}
TABLET = {"width": 820, "height": 1180}
PHONE = {"width": 390, "height": 844}
PASSWORD = "Quiet-Harbour-Reading-57"  # noqa: S105 (an account of the test product only)
CHUNK = 256 * 1024
# Uploads through the real pipeline, and the worker rendering a PDF, on a loaded machine.
PIPELINE_SECONDS = 180
BROWSER_TIMEOUT_MS = 120_000
VIEWER = "https://viewer.example.org/viewer?StudyInstanceUIDs={study_uid}"

# Users and their facility in the product's database; prints the TOTP key.
SETUP = f"""
import json
from django_otp.plugins.otp_totp.models import TOTPDevice
from accounts.models import Facility, Role, User
clinic = Facility.objects.create(name="Harbour Clinic", code="harbour")
User.objects.create_user("colin", "colin@example.org", {PASSWORD!r}, role=Role.RADIOGRAPHER,
    facility=clinic, full_name="Colin Radiographer")
reader = User.objects.create_user("rita", "rita@example.org", {PASSWORD!r},
    role=Role.RADIOLOGIST, full_name="Dr Rita Reader")
device = TOTPDevice.objects.create(user=reader, name="authenticator", confirmed=True)
print(json.dumps({{"key": device.key}}))
"""
# The studies as if received a while ago, so that the STAT one has waited past the alert
# time (30 minutes) when the radiologist opens the worklist.
BACKDATE = """
from datetime import timedelta
from django.utils import timezone
from reports.models import Report
from uploads.models import UploadSession
waited = {"stat": 42, "urgent": 25, "routine": 12}
for report in Report.objects.all():
    when = timezone.now() - timedelta(minutes=waited[report.service_level])
    Report.objects.filter(pk=report.pk).update(created_at=when)
    UploadSession.objects.filter(reports=report).update(created_at=when, completed_at=when)
print("{}")
"""


def study(directory: Path, *, patient: str, description: str, numbers: list[int]) -> list[Path]:
    """A CT series with the given image numbers (a gap shows as an incomplete series)."""
    import pydicom
    from pydicom.uid import generate_uid

    directory.mkdir(parents=True)
    study_uid, series_uid = generate_uid(prefix=ROOT), generate_uid(prefix=ROOT)
    paths = []
    for number in numbers:
        path = directory / f"IM{number:04d}.dcm"
        write_instance(
            path,
            study_uid=study_uid,
            series_uid=series_uid,
            number=number,
            pixel_bytes=4096,
            patient_name=patient,
        )
        dataset = pydicom.dcmread(path)
        dataset.StudyDescription = description
        dataset.AccessionNumber = f"ACC-{description.split()[-1].upper()}"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture
def product(tmp_path: Path, orthanc_clean: Any) -> Iterator[RunningProduct]:
    with running_product(
        tmp_path,
        orthanc_clean,
        REPORT_STAT_ALERT_MINUTES="30",
        PACS_VIEWER_URL=VIEWER,
    ) as running:
        yield running


def send_studies(product: RunningProduct, tmp_path: Path) -> None:
    login = requests.post(
        f"{product.base}/api/v1/auth/login",
        json={"username": "colin", "password": PASSWORD},
        timeout=30,
    )
    assert login.status_code == 200, login.text
    access = login.json()["access"]
    uploader = HttpUploader(product.base, access, CHUNK)
    uploads = []
    for level, patient, description, numbers, notes in [
        ("routine", "ROUTINE^ROBIN", "CT chest", [1, 2, 3], "Follow-up of a known nodule."),
        ("stat", "STAT^SAM", "CT head", [1, 2, 4, 5], "Head trauma, GCS 13. Rule out bleed."),
        ("urgent", "URGENT^UMA", "CT abdomen", [1, 2], "Suspected appendicitis."),
    ]:
        paths = study(tmp_path / level, patient=patient, description=description, numbers=numbers)
        upload = uploader.init(paths, service_level=level, clinical_notes=notes)
        uploader.send(upload, paths)
        uploader.complete(upload)
        uploads.append(upload)
    headers = {"Authorization": f"Bearer {access}"}
    deadline = time.monotonic() + PIPELINE_SECONDS
    for upload in uploads:
        while True:
            assert time.monotonic() < deadline, uploader.status(upload)
            answer = requests.get(
                f"{product.base}/api/v1/reports/upload/{upload['upload_id']}",
                headers=headers,
                timeout=30,
            )
            if answer.status_code == 200:
                break
            time.sleep(0.5)


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _touch_context(
    browser: Any, product: RunningProduct, viewport: dict[str, int], signed_in: Any
) -> Any:
    """A touch device's browser at `viewport` with the session of `signed_in`."""
    context = browser.new_context(
        base_url=product.base,
        viewport=viewport,
        storage_state=signed_in.storage_state(),
        is_mobile=True,
        has_touch=True,
    )
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    return context


def test_a_radiologist_signs_in_with_totp_reads_stat_first_signs_and_downloads_the_pdf(
    product: RunningProduct, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    key = json.loads(
        manage(product, "shell", "--no-imports", "-c", SETUP).strip().splitlines()[-1]
    )["key"]
    send_studies(product, tmp_path)
    manage(product, "shell", "--no-imports", "-c", BACKDATE)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    desktop = browser.new_context(base_url=product.base, viewport=DESKTOP, accept_downloads=True)
    desktop.set_default_timeout(BROWSER_TIMEOUT_MS)
    page = desktop.new_page()
    page.goto("/reports/")
    expect(page).to_have_url(f"{product.base}/accounts/login/?next=%2Freports%2F")
    page.get_by_label("Username").fill("rita")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#sign-in-error")).to_contain_text("This account uses two-step sign-in")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Two-step sign-in code").fill(totp_now(key))
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{product.base}/reports/")

    # STAT first, standing out; then urgent, then routine.
    patients = page.locator("[data-row-link]")
    expect(patients).to_have_text(["STAT, SAM", "URGENT, UMA", "ROUTINE, ROBIN"])
    expect(page.locator("tr.overdue")).to_have_count(1)
    expect(page.locator("tr.overdue [data-row-link]")).to_have_text("STAT, SAM")
    expect(page.get_by_role("alert")).to_contain_text(
        "1 STAT study is waiting longer than 30 minutes."
    )
    expect(page.locator("tr.overdue")).to_contain_text("42 min ago")
    page.screenshot(path=str(SCREENSHOTS / "reports-worklist-desktop.png"))

    # The keyboard: j moves to the first study, Enter opens it.
    page.keyboard.press("j")
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_contain_text("STAT, SAM")
    expect(page.get_by_text("Head trauma, GCS 13. Rule out bleed.")).to_be_visible()
    expect(page.get_by_text("4 of 5 images", exact=True)).to_be_visible()
    expect(page.locator("#viewer-link")).to_have_attribute(
        "href", VIEWER.split("{")[0] + page.locator(".uid").inner_text().strip()
    )
    page.get_by_role("button", name="Assign to me").click()
    expect(page.get_by_text("The report is yours")).to_be_visible()
    expect(page.locator("#report-status")).to_have_text("Being read")
    page.get_by_label("Findings").fill("No intracranial haemorrhage. No fracture.")
    page.get_by_label("Impression").fill("Normal CT of the head.")
    page.screenshot(path=str(SCREENSHOTS / "reports-report-desktop.png"), full_page=True)
    page.locator("#sign").click()
    expect(page.get_by_text("Signed. The PDF is being made")).to_be_visible()
    # The page refreshes by itself until the worker has stored the PDF.
    expect(page.locator("#report-status")).to_have_text("Ready", timeout=PIPELINE_SECONDS * 1000)
    with page.expect_download() as download_info:
        page.locator(".pdf-link").first.click()
    pdf_path = download_info.value.path()
    data = Path(pdf_path).read_bytes()
    assert data.startswith(b"%PDF-")
    text = subprocess.run(
        ["pdftotext", str(pdf_path), "-"], capture_output=True, text=True, check=True
    ).stdout
    assert "No intracranial haemorrhage." in text and "Normal CT of the head." in text

    # The shortcuts: Alt+N opens the next study waiting (the urgent one), Alt+S signs it
    # after asking.
    page.keyboard.press("Alt+N")
    expect(page.locator("h1")).to_contain_text("URGENT, UMA")
    page.get_by_role("button", name="Assign to me").click()
    page.get_by_label("Findings").fill("Appendix not enlarged.")
    page.once("dialog", lambda dialog: dialog.accept())
    page.keyboard.press("Alt+S")
    expect(page.get_by_text("Signed. The PDF is being made")).to_be_visible()

    # The same pages on a tablet, with the desktop's session.
    tablet = _touch_context(browser, product, TABLET, desktop)
    tab = tablet.new_page()
    tab.goto("/reports/?status=all")
    expect(tab.locator("[data-row-link]")).to_have_count(3)
    tab.screenshot(path=str(SCREENSHOTS / "reports-worklist-tablet.png"))
    tab.locator("[data-row-link]").nth(2).click()  # the routine one, still open
    expect(tab.get_by_role("button", name="Assign to me")).to_be_visible()
    tab.screenshot(path=str(SCREENSHOTS / "reports-report-tablet.png"), full_page=True)
    tablet.close()

    # And on a phone: the worklist's table scrolls sideways in its box, the page does not.
    phone = _touch_context(browser, product, PHONE, desktop)
    small = phone.new_page()
    small.goto("/reports/?status=all")
    expect(small.locator("[data-row-link]")).to_have_count(3)
    assert small.evaluate(NO_SIDEWAYS_SCROLL), small.evaluate(
        "document.documentElement.scrollWidth"
    )
    box = small.locator(".table-scroll").evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert box[0] > box[1], box  # the table is wider than the phone: it scrolls in its box
    small.screenshot(path=str(SCREENSHOTS / "reports-worklist-phone.png"))
    small.locator("[data-row-link]").nth(2).click()
    expect(small.get_by_role("button", name="Assign to me")).to_be_visible()
    assert small.evaluate(NO_SIDEWAYS_SCROLL), small.evaluate(
        "document.documentElement.scrollWidth"
    )
    phone.close()
    desktop.close()
