"""The clinic's Reports screen end to end: Debian's Chromium driving the built app, served by
`manage.py serve` (a real Celery worker renders the PDFs), into a real Orthanc. The test
acts as the radiologist through the REST API (docs/reports.md)."""

from __future__ import annotations

import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Page, expect
from pwa_helpers import PASSWORD, Product
from test_pwa_e2e import DUMP_INDEXEDDB, RECEIPT_TIMEOUT_MS, SCREENSHOTS, pick

from uploads.tests.synthetic import write_study

pytestmark = pytest.mark.e2e

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}
# A report opens when the PACS confirmed the upload; a signed one turns ready once the
# worker rendered its PDF (seconds; more on a busy machine).
SERVER_DEADLINE_SECONDS = 120
QUESTION = "Is there a scalp wound? Please send a photo of it."
ANSWER = "Yes, a 3 cm laceration above the left ear; photo attached."

# Every object URL the app makes, and every one it revokes, to look at the PDF it opened.
RECORD_BLOBS = """
window.__blobs = [];
window.__revoked = [];
const create = URL.createObjectURL.bind(URL);
const revoke = URL.revokeObjectURL.bind(URL);
URL.createObjectURL = (blob) => { const url = create(blob); window.__blobs.push({ url, blob }); return url; };
URL.revokeObjectURL = (url) => { window.__revoked.push(url); revoke(url); };
"""

OPENED_BLOB = """async () => {
  const { url, blob } = window.__blobs[window.__blobs.length - 1];
  const head = new TextDecoder().decode(await blob.slice(0, 5).arrayBuffer());
  return { url, type: blob.type, size: blob.size, head };
}"""

CACHED_URLS = """async () => {
  const urls = [];
  for (const name of await caches.keys()) {
    const cache = await caches.open(name);
    for (const request of await cache.keys()) urls.push(request.url);
  }
  return urls;
}"""


def make_user(product: Product, username: str, *, role: str) -> None:
    product.shell_json(
        "from accounts.models import User; "
        f"u = User.objects.create_user(username={username!r}, password={PASSWORD!r}, "
        f"email='{username}@example.org', role={role!r}, approval='approved', "
        "email_verified=True); print(u.pk)"
    )


class Api:
    """The REST API as one signed-in user."""

    def __init__(self, product: Product, username: str) -> None:
        self.base = f"{product.base}/api/v1"
        answer = requests.post(
            f"{self.base}/auth/login", json={"username": username, "password": PASSWORD}, timeout=30
        )
        assert answer.status_code == 200, answer.text
        self.headers = {"Authorization": f"Bearer {answer.json()['access']}"}

    def get(self, path: str) -> Any:
        answer = requests.get(f"{self.base}{path}", headers=self.headers, timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def post(self, path: str, body: dict[str, str] | None = None) -> Any:
        answer = requests.post(
            f"{self.base}{path}", json=body or {}, headers=self.headers, timeout=30
        )
        assert answer.status_code == 200, answer.text
        return answer.json()


def poll(fetch: Any, done: Any, timeout: float = SERVER_DEADLINE_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value):
        assert time.monotonic() < deadline, f"not done in {timeout} s: {value}"
        time.sleep(0.5)
        value = fetch()
    return value


def photo(path: Path) -> Path:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (160, 120), (200, 60, 40)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue())
    return path


def sign_in_as(page: Page, username: str) -> None:
    page.goto("/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Upload study")).to_be_visible()


def send_two_studies(page: Page, tmp_path: Path) -> None:
    """One upload from the CD of two studies of the patient: two reports."""
    write_study(tmp_path / "CD" / "DICOM" / "A", instances=2, instance_bytes=40 * 1024)
    write_study(tmp_path / "CD" / "DICOM" / "B", instances=2, instance_bytes=40 * 1024)
    pick(page, "pick-folder", tmp_path / "CD")
    expect(page.get_by_test_id("patient-name")).to_have_text("SYNTHETIC, PATIENT")
    page.get_by_label("Study name").fill("CT head")
    page.get_by_role("button", name="Send to PACS").click()
    expect(page.get_by_test_id("study").get_by_test_id("study-state")).to_have_text(
        "Received by PACS", timeout=RECEIPT_TIMEOUT_MS
    )


def card(page: Page, report_id: int) -> Any:
    return page.locator(f'[data-testid="report"][data-report-id="{report_id}"]')


def screenshots(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    page.set_viewport_size(DESKTOP)
    page.screenshot(path=str(SCREENSHOTS / f"{name}-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)


def test_reports_screen_shows_ready_opens_the_pdf_and_answers_the_question_offline_first(
    product: Product, orthanc_clean: Any, browser: Any, tmp_path: Path
) -> None:
    make_user(product, "radio", role="radiographer")
    make_user(product, "reader", role="radiologist")
    context = browser.new_context(
        base_url=product.base, viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    context.add_init_script(RECORD_BLOBS)
    page = context.new_page()
    sign_in_as(page, "radio")
    send_two_studies(page, tmp_path)

    # The radiologist, through the API: signs the first report, asks about the second.
    reader = Api(product, "reader")
    listed = poll(lambda: reader.get("/reports?sort=date")["results"], lambda r: len(r) == 2)
    first, second = (r["id"] for r in listed)
    reader.post(f"/reports/{first}/claim")
    reader.post(f"/reports/{first}/sign", {"findings": "No fracture.", "impression": "Normal."})
    poll(lambda: reader.get(f"/reports/{first}"), lambda r: r["status"] == "ready")
    reader.post(f"/reports/{second}/ask", {"question": QUESTION})

    page.get_by_role("button", name="Reports").click()
    expect(page.get_by_role("heading", name="Reports")).to_be_visible()
    expect(card(page, first).get_by_test_id("report-state")).to_have_text("Report ready")
    expect(card(page, second).get_by_test_id("report-state")).to_have_text(
        "The radiologist has a question"
    )
    expect(card(page, second).get_by_test_id("report-question")).to_contain_text(QUESTION)
    # Newest first: the second report was opened last.
    ids = page.get_by_test_id("report").evaluate_all(
        "(cards) => cards.map((c) => Number(c.dataset.reportId))"
    )
    assert ids == [second, first], ids
    screenshots(page, "pwa-reports")

    # The PDF: downloaded when opened, shown from memory, kept nowhere.
    with context.expect_page() as opened:
        card(page, first).get_by_role("button", name="Open the report (PDF)").click()
    tab = opened.value
    page.wait_for_function("window.__blobs.length > 0")
    blob = page.evaluate(OPENED_BLOB)
    assert blob["type"] == "application/pdf" and blob["head"] == "%PDF-", blob
    assert blob["size"] > 1000, blob
    expect(page.get_by_role("button", name="Open the report (PDF)")).to_be_enabled()
    assert not [u for u in page.evaluate(CACHED_URLS) if "/reports/" in u]
    dump = json.dumps(page.evaluate(DUMP_INDEXEDDB))
    assert "%PDF" not in dump and "No fracture" not in dump, dump
    assert "SYNTHETIC" not in dump and "SYN0001" not in dump, dump
    tab.close()
    # Leaving the screen revokes the object URL (it is revoked after a minute anyway).
    page.get_by_role("button", name="Back to studies").click()
    page.wait_for_function("(url) => window.__revoked.includes(url)", arg=blob["url"])
    # The study's card on the main screen says its report's state in the same words.
    expect(page.get_by_test_id("study-summary")).to_contain_text("Report ready")
    page.get_by_role("button", name="Reports").click()

    # Offline: what was loaded stays readable, marked; the answer waits on the device.
    context.route(re.compile(r".*/api/.*"), lambda route: route.abort("internetdisconnected"))
    context.set_offline(True)
    expect(page.get_by_test_id("reports-offline")).to_contain_text(
        re.compile(r"Offline — shown as of \d{1,2}[:.]\d{2}")
    )
    expect(card(page, first).get_by_test_id("report-state")).to_have_text("Report ready")
    expect(card(page, first).get_by_role("button", name="Open the report (PDF)")).to_be_disabled()
    question = card(page, second)
    question.get_by_label("Your answer").fill(ANSWER)
    question.get_by_role("button", name="Send the answer").click()
    expect(question.get_by_test_id("reply-queued")).to_contain_text(
        "saved on this device and is sent as soon as the network is back"
    )
    question.get_by_text("Add images").click()
    question.get_by_test_id("add-photos").set_input_files(photo(tmp_path / "wound.jpg"))
    expect(question.get_by_role("status").last).to_contain_text("1 image is queued for this study")
    screenshots(page, "pwa-reports-offline")
    replies = json.loads(json.dumps(page.evaluate(DUMP_INDEXEDDB)["relaypacs"]["replies"]))
    assert len(replies) == 1 and ANSWER in replies[0], replies

    # Back online: the answer is sent by itself, the report is being read again.
    context.unroute(re.compile(r".*/api/.*"))
    context.set_offline(False)
    answered = poll(lambda: reader.get(f"/reports/{second}"), lambda r: r["status"] == "pending")
    assert answered["answer"] == ANSWER, answered
    expect(card(page, second).get_by_test_id("report-state")).to_have_text("Being read")
    expect(card(page, second).get_by_test_id("report-question")).to_have_count(0)
    assert page.evaluate(DUMP_INDEXEDDB)["relaypacs"]["replies"] == []
    # The photo went through the upload queue and reached the PACS.
    page.get_by_role("button", name="Back to studies").click()
    expect(page.get_by_test_id("study").first.get_by_test_id("study-state")).to_have_text(
        "Received by PACS", timeout=RECEIPT_TIMEOUT_MS
    )
    uploads = product.shell_json(
        "import json; from uploads.models import UploadSession as U; "
        "print(json.dumps(sorted([u.state, u.metadata.get('modality', ''), "
        "u.metadata.get('patient_id', '')] for u in U.objects.all())))"
    )
    # The photos carry the report's patient, read from the server as the upload started.
    assert uploads == [["completed", "CT", "SYN0001"], ["completed", "XC", "SYN0001"]], uploads
    context.close()


def test_a_photo_added_from_the_reports_screen_joins_the_study_and_its_report(
    product: Product, orthanc_clean: Any, browser: Any, tmp_path: Path
) -> None:
    make_user(product, "radio", role="radiographer")
    make_user(product, "reader", role="radiologist")
    context = browser.new_context(base_url=product.base, viewport=PHONE)
    page = context.new_page()
    sign_in_as(page, "radio")
    write_study(tmp_path / "CD" / "DICOM", instances=2, instance_bytes=40 * 1024)
    pick(page, "pick-folder", tmp_path / "CD")
    page.get_by_role("button", name="Send to PACS").click()
    expect(page.get_by_test_id("study").get_by_test_id("study-state")).to_have_text(
        "Received by PACS", timeout=RECEIPT_TIMEOUT_MS
    )
    reader = Api(product, "reader")
    (report,) = poll(lambda: reader.get("/reports")["results"], lambda r: len(r) == 1)
    reader.post(f"/reports/{report['id']}/ask", {"question": QUESTION})

    page.get_by_role("button", name="Reports").click()
    question = card(page, report["id"])
    question.get_by_text("Add images").click()
    question.get_by_test_id("add-photos").set_input_files(photo(tmp_path / "wound.jpg"))
    page.get_by_role("button", name="Back to studies").click()
    expect(page.get_by_test_id("study").first.get_by_test_id("study-state")).to_have_text(
        "Received by PACS", timeout=RECEIPT_TIMEOUT_MS
    )
    # The new upload attaches to the report (and, as an answer, makes it pending).
    after = poll(
        lambda: reader.get(f"/reports/{report['id']}"),
        lambda r: len(r["upload_ids"]) > 1,
        timeout=30,
    )
    assert len(after["upload_ids"]) == 2 and after["status"] == "pending", after
    assert len(reader.get("/reports")["results"]) == 1
    context.close()
