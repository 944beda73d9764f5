"""The dashboard at phone size end to end: Debian's Chromium driving the built app, served by
`manage.py serve` (a real Celery worker keeps the rollups), into a real Orthanc
(docs/analytics.md). Online it shows the figures of a real upload; offline, the last
figures this device loaded, marked cached, without anything about a patient."""

from __future__ import annotations

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

STATS = re.compile(r"/api/v1/upload/stats\?period=(\w+)$")
STATS_1W = re.compile(r"/api/v1/upload/stats\?period=1w$")


def close_toasts(page: Any) -> None:
    """The study's "received by the PACS" toast, out of the screenshots."""
    toasts = page.get_by_test_id("toast")
    while toasts.count():
        toasts.first.get_by_role("button", name="Close").click()


def test_dashboard_shows_the_upload_and_its_cached_figures_offline(
    product: Product, orthanc_clean: Any, browser: Any, tmp_path: Path
) -> None:
    context = browser.new_context(
        base_url=product.base, viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    page = context.new_page()
    periods: list[str] = []
    page.on("request", lambda r: (m := STATS.search(r.url)) and periods.append(m.group(1)))
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
    expect(page.get_by_test_id("kpi-uploads")).to_contain_text("1")
    expect(page.get_by_test_id("kpi-success")).to_contain_text("100%")
    expect(page.get_by_test_id("kpi-volume")).to_contain_text("KB")
    expect(page.get_by_test_id("modality-pie")).to_contain_text("CT")
    expect(page.get_by_test_id("level-bars")).to_contain_text("Urgent")
    expect(page.get_by_test_id("trend")).to_be_visible()
    expect(page.get_by_test_id("cached-badge")).to_have_count(0)
    assert periods[-1] == "1m", periods

    # The period switch asks for that period.
    with page.expect_response(STATS_1W) as week:
        page.get_by_role("button", name="1 week").click()
    # The app reported the upload's network figures (POST .../telemetry) as it sent it.
    network = week.value.json()["network"]
    assert network["uploads_reported"] == 1, network
    assert network["average_throughput_bytes_per_second"], network
    expect(page.get_by_role("button", name="1 week")).to_have_attribute("aria-pressed", "true")
    expect(page.get_by_test_id("kpi-uploads")).to_contain_text("1")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    close_toasts(page)
    page.screenshot(path=str(SCREENSHOTS / "pwa-dashboard.png"), full_page=True)
    page.set_viewport_size(DESKTOP)
    page.screenshot(path=str(SCREENSHOTS / "pwa-dashboard-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)

    # Offline: the last figures, marked cached with their time; nothing of the patient kept.
    context.set_offline(True)
    badge = page.get_by_test_id("cached-badge")
    expect(badge).to_contain_text("Cached — figures of")
    expect(page.get_by_test_id("kpi-uploads")).to_contain_text("1")
    page.screenshot(path=str(SCREENSHOTS / "pwa-dashboard-offline.png"), full_page=True)
    dump = page.evaluate(DUMP_INDEXEDDB)
    assert dump["relaypacs"]["dashboard"], dump
    text = json.dumps(dump)
    assert "SYNTHETIC" not in text and "SYN0001" not in text, text
    # Another period never loaded on this device says so.
    page.get_by_role("button", name="6 months").click()
    expect(badge).to_contain_text("has not loaded these figures yet")
    context.set_offline(False)
    expect(page.get_by_test_id("kpi-uploads")).to_contain_text("1")
    expect(badge).to_have_count(0)

    # Refreshed every minute (the page's clock moved on by the test).
    clocked = context.new_page()
    clocked.clock.install()
    asked: list[str] = []
    clocked.on("request", lambda r: (m := STATS.search(r.url)) and asked.append(m.group(1)))
    clocked.goto("/#/dashboard")
    expect(clocked.get_by_test_id("kpi-uploads")).to_contain_text("1")
    before = len(asked)
    assert before >= 1, asked
    clocked.clock.run_for(61_000)
    deadline = time.monotonic() + 20
    while len(asked) == before and time.monotonic() < deadline:
        clocked.wait_for_timeout(200)
    assert len(asked) > before, asked
    context.close()
