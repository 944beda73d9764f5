"""The dashboard end to end, phone size first: Debian's Chromium driving the built app,
served by `manage.py serve` (a real Celery worker keeps the rollups), into a real Orthanc
(docs/analytics.md). An administrator sees the figures of a known history (two clinics,
made in the product's database and counted by `manage.py analytics_rebuild`) plus a real
upload sent from the app; filters by facility, modality and service level change the
figures and are kept across a reload, the minute's refresh and the offline view; the CSV
download holds the rows of the view; offline, the last figures this device loaded for the
view, marked cached, without anything about a patient."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from pwa_helpers import Product
from test_pwa_e2e import DUMP_INDEXEDDB, RECEIPT_TIMEOUT_MS, SCREENSHOTS, pick, sign_in
from test_pwa_reports import DESKTOP, PHONE

from uploads.tests.synthetic import write_study

pytestmark = pytest.mark.e2e

STATS = re.compile(r"/api/v1/upload/stats\?(period=[^#]*)$")
STATS_1W = re.compile(r"/api/v1/upload/stats\?period=1w$")
MIB = 1024 * 1024

# Seven uploads of today in two clinics, in the product's database; their rollups are
# written by analytics_rebuild, as for uploads older than the statistics. Every
# completed one took 60 s from init to the PACS receipt.
KNOWN_HISTORY = """
import json
from datetime import timedelta
from django.core.management import call_command
from accounts.models import Facility, Role, User
from uploads.models import UploadSession

north = Facility.objects.create(code="north", name="North Clinic")
south = Facility.objects.create(code="south", name="South Clinic")
people = {
    f: User.objects.create_user(f"{f.code}-tech", f"{f.code}@example.org", "x" * 20,
                                role=Role.RADIOGRAPHER, facility=f)
    for f in (north, south)
}
for facility, modality, level, state, size in [
    (north, "CT", "routine", "completed", 1),
    (north, "CT", "routine", "completed", 1),
    (north, "CT", "routine", "completed", 1),
    (north, "MR", "urgent", "failed", 1),
    (south, "XC", "routine", "completed", 2),
    (south, "XC", "routine", "completed", 2),
    (south, "CT", "stat", "cancelled", 1),
]:
    upload = UploadSession.objects.create(
        owner=people[facility], facility=facility, total_size=size * 1048576,
        chunk_size=1048576, total_chunks=size, service_level=level,
        metadata={"modality": modality}, state=state,
    )
    at = upload.created_at
    UploadSession.objects.filter(pk=upload.pk).update(
        received_at=at + timedelta(seconds=20),
        completed_at=at + timedelta(seconds=60) if state == "completed" else None,
        failed_at=at + timedelta(seconds=30) if state == "failed" else None,
    )
call_command("analytics_rebuild")
print(json.dumps(UploadSession.objects.count()))
"""


def close_toasts(page: Any) -> None:
    """The study's "received by the PACS" toast, out of the screenshots."""
    toasts = page.get_by_test_id("toast")
    while toasts.count():
        toasts.first.get_by_role("button", name="Close").click()


def facility_rows(page: Any) -> list[list[str]]:
    rows = page.get_by_test_id("facility-table").get_by_test_id("facility-row")
    return [
        [cell.strip() for cell in row.locator("th, td").all_inner_texts()] for row in rows.all()
    ]


def test_dashboard_of_an_administrator_with_filters_csv_and_cached_figures_offline(
    product: Product, orthanc_clean: Any, browser: Any, tmp_path: Path
) -> None:
    assert product.shell_json(KNOWN_HISTORY) == 7
    context = browser.new_context(
        base_url=product.base, viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    queries: list[str] = []
    page.on("request", lambda r: (m := STATS.search(r.url)) and queries.append(m.group(1)))
    # The technician of the product's tests is its superuser: an administrator's view.
    sign_in(page)
    write_study(tmp_path / "CD" / "DICOM", instances=2, instance_bytes=40 * 1024)
    pick(page, "pick-folder", tmp_path / "CD" / "DICOM")
    expect(page.get_by_test_id("patient-name")).to_have_text("SYNTHETIC, PATIENT")
    page.get_by_label("Urgent").check()
    page.get_by_role("button", name="Send to PACS").click()
    expect(page.get_by_test_id("study").get_by_test_id("study-state")).to_have_text(
        "Received by PACS", timeout=RECEIPT_TIMEOUT_MS
    )

    expect(page.get_by_test_id("toast")).to_contain_text("received by the PACS")
    close_toasts(page)
    page.get_by_role("button", name="Dashboard").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    # The known history and the real upload (a CT study, urgent, of no facility):
    # 8 uploads, 6 completed and 1 failed.
    expect(page.get_by_test_id("kpi-uploads")).to_have_text(re.compile(r"^8"))
    expect(page.get_by_test_id("kpi-success")).to_contain_text("85.7%")
    expect(page.get_by_test_id("kpi-volume")).to_contain_text("MB")
    expect(page.get_by_test_id("modality-pie")).to_contain_text("CT")
    expect(page.get_by_test_id("modality-pie")).to_contain_text("XC")
    expect(page.get_by_test_id("level-bars")).to_contain_text("Urgent")
    expect(page.get_by_test_id("trend")).to_be_visible()
    expect(page.get_by_test_id("cached-badge")).to_have_count(0)
    assert queries[-1] == "period=1m", queries
    # The administrator's table: facility, uploads, success rate, average time, bytes.
    expect(page.get_by_test_id("facility-row")).to_have_count(3)
    rows = facility_rows(page)
    assert rows[0] == ["North Clinic", "4", "75.0%", "60 s", "4.0 MB"], rows
    assert rows[1] == ["South Clinic", "3", "100%", "60 s", "5.0 MB"], rows
    assert rows[2][:3] == ["No facility", "1", "100%"], rows

    # The period switch asks for that period.
    with page.expect_response(STATS_1W) as week:
        page.get_by_role("button", name="1 week").click()
    # The app reported the upload's network figures (POST .../telemetry) as it sent it.
    network = week.value.json()["network"]
    assert network["uploads_reported"] == 1, network
    assert network["average_throughput_bytes_per_second"], network
    expect(page.get_by_role("button", name="1 week")).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_test_id("kpi-uploads")).to_have_text(re.compile(r"^8"))
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    close_toasts(page)
    page.screenshot(path=str(SCREENSHOTS / "pwa-dashboard.png"), full_page=True)
    page.set_viewport_size(DESKTOP)
    page.screenshot(path=str(SCREENSHOTS / "pwa-dashboard-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)

    # Filters: the facility, then a modality, each changing the figures.
    page.get_by_label("Facility").select_option(label="North Clinic")
    expect(page.get_by_test_id("kpi-uploads")).to_have_text(re.compile(r"^4"))
    expect(page.get_by_test_id("kpi-success")).to_contain_text("75.0%")
    expect(page.get_by_test_id("facility-row")).to_have_count(1)
    assert "facility=north" in queries[-1], queries

    # The CSV of the view, fetched with the access token.
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    assert download.value.suggested_filename == "relaypacs-upload-stats-1w.csv"
    lines = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    got = sorted(
        (r["facility"], r["modality"], r["service_level"], r["outcome"], r["uploads"], r["bytes"])
        for r in lines
    )
    assert got == [
        ("north", "CT", "routine", "completed", "3", str(3 * MIB)),
        ("north", "MR", "urgent", "failed", "1", str(MIB)),
    ], lines
    assert {r["average_upload_seconds"] for r in lines if r["outcome"] == "completed"} == {"60.0"}

    page.get_by_label("Modality").select_option("CT")
    expect(page.get_by_test_id("kpi-uploads")).to_have_text(re.compile(r"^3"))
    expect(page.get_by_test_id("kpi-success")).to_contain_text("100%")
    page.get_by_label("Service level").select_option(label="Urgent")
    expect(page.get_by_test_id("kpi-uploads")).to_have_text(re.compile(r"^0"))
    page.get_by_label("Service level").select_option(label="Every service level")
    expect(page.get_by_test_id("kpi-uploads")).to_have_text(re.compile(r"^3"))
    page.screenshot(path=str(SCREENSHOTS / "pwa-dashboard-filtered.png"), full_page=True)

    # Kept across a reload.
    page.reload()
    expect(page.get_by_label("Facility")).to_have_value("north")
    expect(page.get_by_label("Modality")).to_have_value("CT")
    expect(page.get_by_test_id("kpi-uploads")).to_have_text(re.compile(r"^3"))

    # Offline: the last figures of this view, marked cached with their time; nothing of the
    # patient kept; the CSV cannot come, and the page says so in a sentence.
    context.set_offline(True)
    badge = page.get_by_test_id("cached-badge")
    expect(badge).to_contain_text("Cached — figures of")
    expect(page.get_by_test_id("kpi-uploads")).to_have_text(re.compile(r"^3"))
    expect(page.get_by_label("Facility")).to_have_value("north")
    page.get_by_role("button", name="Download CSV").click()
    expect(page.get_by_test_id("csv-error")).to_have_text(
        "The CSV could not be downloaded because this device is offline: connect to the "
        "network and press Download CSV again."
    )
    page.screenshot(path=str(SCREENSHOTS / "pwa-dashboard-offline.png"), full_page=True)
    dump = page.evaluate(DUMP_INDEXEDDB)
    assert dump["relaypacs"]["dashboard"], dump
    text = json.dumps(dump)
    assert "SYNTHETIC" not in text and "SYN0001" not in text, text
    # Another period never loaded on this device says so.
    page.get_by_role("button", name="6 months").click()
    expect(badge).to_contain_text("has not loaded these figures yet")
    page.get_by_role("button", name="1 week").click()
    expect(page.get_by_test_id("kpi-uploads")).to_have_text(re.compile(r"^3"))
    context.set_offline(False)
    expect(badge).to_have_count(0)
    expect(page.get_by_test_id("kpi-uploads")).to_have_text(re.compile(r"^3"))

    # Refreshed every minute (the page's clock moved on by the test), filters kept.
    clocked = context.new_page()
    clocked.clock.install()
    asked: list[str] = []
    clocked.on("request", lambda r: (m := STATS.search(r.url)) and asked.append(m.group(1)))
    clocked.goto("/#/dashboard")
    expect(clocked.get_by_test_id("kpi-uploads")).to_have_text(re.compile(r"^3"))
    before = len(asked)
    assert before >= 1, asked
    clocked.clock.run_for(61_000)
    deadline = time.monotonic() + 20
    while len(asked) == before and time.monotonic() < deadline:
        clocked.wait_for_timeout(200)
    assert len(asked) > before, asked
    assert asked[-1] == "period=1w&facility=north&modality=CT", asked

    # Cleared, the whole network again.
    clocked.get_by_role("button", name="Clear filters").click()
    expect(clocked.get_by_test_id("kpi-uploads")).to_have_text(re.compile(r"^8"))
    expect(clocked.get_by_test_id("facility-row")).to_have_count(3)
    context.close()
