"""The live connection and the notification centre end to end: Debian's Chromium driving the
built app, served by `manage.py serve` (uvicorn, a real Celery worker), into a real Orthanc
reached through a link the test can cut, so that a study waits for the PACS as long as the
test needs (docs/notifications.md).

What it shows: while the app's WebSocket is connected, upload states arrive by push and the
app asks no status; when the stream is down the app polls again by itself; the "received by
the PACS" notification arrives live (toast and count); the centre marks read, unread, all
read and opens the study."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from playwright.sync_api import Page, expect
from pwa_helpers import CuttableLink, Product, product_with_technician
from test_pwa_e2e import RECEIPT_TIMEOUT_MS, SCREENSHOTS, pick, sign_in
from test_pwa_reports import PHONE, screenshots

from uploads.tests.synthetic import write_study

pytestmark = pytest.mark.e2e

STATUS = re.compile(r"/api/v1/upload/[0-9a-f-]+/status$")
RECEIVED = re.compile("received by the PACS", re.IGNORECASE)
# Longer than three of the app's polling periods (1.5 s): without the stream there would
# be two or more status requests in it.
QUIET_WINDOW_MS = 5000
# Reconnecting after the stream was down waits out the backoff (1, 2, 4, 8 … s).
RECONNECT_TIMEOUT_MS = 60_000


def through(link: CuttableLink, url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"127.0.0.1:{link.port}"))


@pytest.fixture
def pacs_link(orthanc_clean: Any) -> Iterator[CuttableLink]:
    relay = CuttableLink(urlsplit(orthanc_clean.url).port)
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture
def product_via_link(
    tmp_path: Path, orthanc_clean: Any, pacs_link: CuttableLink, frontend_dist: Path
) -> Iterator[Product]:
    with product_with_technician(
        tmp_path,
        orthanc_clean,
        PACS_DICOMWEB_URL=through(pacs_link, orthanc_clean.dicomweb_url),
        PACS_ORTHANC_URL=through(pacs_link, orthanc_clean.url),
        # The PACS is back within seconds here: retry soon.
        PACS_RETRY_BASE_SECONDS="2",
        PACS_RETRY_MAX_SECONDS="4",
    ) as product:
        yield product


class Stream:
    """The page's WebSocket to /ws/notifications, routed through Playwright so the test can
    take the stream down (close it and refuse new ones) and bring it back."""

    def __init__(self, page: Page) -> None:
        self.blocked = False
        self.routes: list[Any] = []
        self.opened = 0
        page.route_web_socket(re.compile(r".*/ws/notifications.*"), self._handle)

    def _handle(self, ws: Any) -> None:
        if self.blocked:
            ws.close(code=1011, reason="down for the test")
            return
        self.opened += 1
        ws.connect_to_server()
        self.routes.append(ws)

    def take_down(self) -> None:
        self.blocked = True
        for ws in self.routes:
            ws.close(code=1011, reason="down for the test")
        self.routes.clear()

    def bring_back(self) -> None:
        self.blocked = False


def expect_live(page: Page, live: bool, timeout: float = 30_000) -> None:
    """Through the centre, which says whether it is connected to live updates."""
    page.get_by_test_id("notifications-button").click()
    expect(page.get_by_test_id("live-state")).to_have_attribute(
        "data-live", "true" if live else "false", timeout=timeout
    )
    page.get_by_role("button", name="Back to studies").click()


def send_study(page: Page, folder: Path, name: str) -> None:
    write_study(folder, instances=2, instance_bytes=40 * 1024)
    pick(page, "pick-folder", folder)
    expect(page.get_by_test_id("patient-name")).to_have_text("SYNTHETIC, PATIENT")
    page.get_by_label("Study name").fill(name)
    page.get_by_role("button", name="Send to PACS").click()


def test_pushed_states_stop_polling_and_the_centre_marks_and_opens(
    product_via_link: Product, pacs_link: CuttableLink, browser: Any, tmp_path: Path
) -> None:
    context = browser.new_context(
        base_url=product_via_link.base,
        viewport=PHONE,
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    page = context.new_page()
    stream = Stream(page)
    statuses: list[float] = []
    page.on("request", lambda r: STATUS.search(r.url) and statuses.append(time.monotonic()))
    tokens_in_urls: list[str] = []
    page.on(
        "request",
        lambda r: ("token=" in r.url or "access=" in r.url) and tokens_in_urls.append(r.url),
    )

    sign_in(page)
    expect_live(page, True)
    assert stream.opened == 1

    # The PACS cannot be reached: the study waits ("Sending to PACS") as long as the test needs.
    pacs_link.cut()
    send_study(page, tmp_path / "one" / "DICOM", "CT head")
    card = page.get_by_test_id("study")
    expect(card.get_by_test_id("study-state")).to_have_text(
        "Sending to PACS", timeout=RECEIPT_TIMEOUT_MS
    )
    before = len(statuses)
    page.wait_for_timeout(QUIET_WINDOW_MS)
    assert len(statuses) == before, "the app polled the status while the stream was connected"

    # Back: the PACS confirms; the notification arrives live, with the count.
    pacs_link.restore()
    toast = page.get_by_test_id("toast")
    expect(toast).to_contain_text(RECEIVED, timeout=RECEIPT_TIMEOUT_MS)
    expect(page.get_by_test_id("unread-count")).to_have_text("1")
    expect(card.get_by_test_id("study-state")).to_have_text(
        "Received by PACS", timeout=RECEIPT_TIMEOUT_MS
    )
    # One status request for the delivered study's summary, none to follow it.
    assert len(statuses) - before <= 1, statuses
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "pwa-notifications-toast.png"))
    toast.get_by_role("button", name="Close").click()

    # The stream is down: polling comes back by itself.
    stream.take_down()
    expect_live(page, False)
    pacs_link.cut()
    page.get_by_role("button", name="Dismiss this study (the history keeps it)").click()
    expect(card).to_have_count(0)  # off the queue (the history keeps it)
    send_study(page, tmp_path / "two" / "DICOM", "CT chest")
    expect(card).to_have_count(1)
    # The same synthetic patient, date and modality: the server asks first.
    card.get_by_role("button", name="Send anyway").click()
    expect(card.get_by_test_id("study-state")).to_have_text(
        "Sending to PACS", timeout=RECEIPT_TIMEOUT_MS
    )
    before = len(statuses)
    page.wait_for_timeout(QUIET_WINDOW_MS)
    assert len(statuses) - before >= 2, "the app did not poll while the stream was down"

    # Stream back: it resumes from its last id and the second notification comes.
    stream.bring_back()
    pacs_link.restore()
    expect(card.get_by_test_id("study-state")).to_have_text(
        "Received by PACS", timeout=RECEIPT_TIMEOUT_MS
    )
    expect(page.get_by_test_id("unread-count")).to_have_text("2", timeout=RECONNECT_TIMEOUT_MS)
    assert stream.opened == 2

    # The centre: newest first, unread count, mark read / unread, mark all read.
    page.get_by_test_id("notifications-button").click()
    expect(page.get_by_role("heading", name="Notifications")).to_be_visible()
    items = page.get_by_test_id("notification")
    expect(items).to_have_count(2)
    expect(items.nth(0)).to_contain_text(RECEIVED)
    expect(page.get_by_test_id("centre-unread")).to_have_text("2 unread")
    ids = items.evaluate_all("(li) => li.map((n) => Number(n.dataset.notificationId))")
    assert ids == sorted(ids, reverse=True), ids
    expect(page.get_by_test_id("live-state")).to_have_attribute("data-live", "true")
    toasts = page.get_by_test_id("toast")
    while toasts.count():
        toasts.first.get_by_role("button", name="Close").click()
    screenshots(page, "pwa-notifications")

    first = items.nth(0)
    with page.expect_response(lambda response: response.url.endswith("/read")):
        first.get_by_role("button", name="Mark as read").click()
    expect(first).to_have_attribute("data-read", "true")
    expect(page.get_by_test_id("centre-unread")).to_have_text("1 unread")
    expect(page.get_by_test_id("unread-count")).to_have_text("1")
    with page.expect_response(lambda response: response.url.endswith("/unread")):
        first.get_by_role("button", name="Mark as unread").click()
    expect(first).to_have_attribute("data-read", "false")
    expect(page.get_by_test_id("centre-unread")).to_have_text("2 unread")
    # The centre shows the change at once; the server's answer is awaited before the
    # reload below, which would otherwise cancel a request still on its way.
    with page.expect_response(
        lambda response: response.url.endswith("/api/v1/notifications/read-all"),
        timeout=RECONNECT_TIMEOUT_MS,
    ) as read_all:
        page.get_by_role("button", name="Mark all as read").click()
    assert read_all.value.ok, read_all.value.status
    expect(page.get_by_test_id("centre-unread")).to_have_text("0 unread")
    expect(page.get_by_test_id("unread-count")).to_have_count(0)
    expect(page.locator('[data-testid="notification"][data-read="false"]')).to_have_count(0)

    # The server agrees: after a reload the list comes back with none unread.
    page.reload()
    expect(page.get_by_test_id("notification")).to_have_count(2)
    expect(page.locator('[data-testid="notification"][data-read="false"]')).to_have_count(0)
    expect(page.get_by_test_id("centre-unread")).to_have_text("0 unread")

    # Open the first study from its notification.
    page.get_by_test_id("notification").nth(1).get_by_role("button", name="Open the study").click()
    expect(page.get_by_role("heading", name="Study")).to_be_visible()
    expect(page.get_by_test_id("server-state")).to_have_text("Received by PACS")
    assert not tokens_in_urls, tokens_in_urls
    context.close()
