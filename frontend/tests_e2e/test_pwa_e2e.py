"""The PWA end to end: Debian's Chromium driving the built app, served by `manage.py serve`
with a real Celery worker, into a real Orthanc."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from pwa_helpers import (
    PASSWORD,
    USERNAME,
    CuttableLink,
    Product,
    phone_through,
    product_with_technician,
)

from uploads.tests.synthetic import write_study

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
# Processing, STOW-RS and the QIDO-RS check of a few MB take seconds; leave room for a slow CI.
RECEIPT_TIMEOUT_MS = 120_000

DUMP_INDEXEDDB = """async () => {
  const names = (await indexedDB.databases()).map((d) => d.name);
  const out = {};
  for (const name of names) {
    const db = await new Promise((ok, ko) => {
      const r = indexedDB.open(name);
      r.onsuccess = () => ok(r.result);
      r.onerror = () => ko(r.error);
    });
    out[name] = {};
    for (const store of db.objectStoreNames) {
      const rows = await new Promise((ok, ko) => {
        const r = db.transaction(store).objectStore(store).getAll();
        r.onsuccess = () => ok(r.result);
        r.onerror = () => ko(r.error);
      });
      out[name][store] = rows.map((row) => JSON.stringify(row, (k, v) => v instanceof Blob ? {blob: v.size} : v));
    }
    db.close();
  }
  return out;
}"""


def sign_in(page: Page, screenshot: bool = False) -> None:
    page.goto("/")
    page.get_by_label("Username").fill(USERNAME)
    page.get_by_label("Password").fill(PASSWORD)
    if screenshot:
        page.screenshot(path=str(SCREENSHOTS / "sign-in.png"))
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Upload study")).to_be_visible()


def pick(page: Page, testid: str, files: Any) -> None:
    page.get_by_role("button", name="Upload study").click()
    page.get_by_test_id(testid).set_input_files(files)


def assert_in_orthanc(orthanc: Any, paths: list[Path]) -> None:
    from uploads.tests.helpers import sop_uid

    for path in paths:
        assert orthanc.instance_file(sop_uid(path)) == path.read_bytes(), path.name


def assert_no_phi_left(page: Page) -> None:
    dump = page.evaluate(DUMP_INDEXEDDB)
    text = json.dumps(dump)
    assert "SYNTHETIC" not in text and "SYN0001" not in text, text
    assert dump["relaypacs"]["blobs"] == [], dump
    assert "IM0000" not in text, text  # file names can carry patient data too


@pytest.fixture(scope="module")
def product(
    tmp_path_factory: pytest.TempPathFactory, orthanc: Any, frontend_dist: Path
) -> Iterator[Product]:
    """One product for the module's tests (starting one costs about 10 s of CPU on the
    test machine's two cores); the technician's duplicate check is off, since several
    tests send the same synthetic patient. The duplicate test has a product of its own."""
    with product_with_technician(tmp_path_factory.mktemp("pwa-e2e"), orthanc) as product:
        assert (
            product.shell_json(
                "from accounts.models import User; "
                "print(User.objects.filter(username='tech').update(duplicate_detection=False))"
            )
            == 1
        )
        yield product


@pytest.fixture
def own_product(tmp_path: Path, orthanc: Any, frontend_dist: Path) -> Iterator[Product]:
    """A product whose technician has sent nothing yet, duplicate check on (the default)."""
    with product_with_technician(tmp_path / "own", orthanc) as product:
        yield product


@pytest.fixture
def own_phone(browser: Any, own_product: Product) -> Iterator[Any]:
    """A phone-sized browser context on ``own_product``."""
    context = browser.new_context(
        base_url=own_product.base,
        viewport={"width": 360, "height": 640},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    try:
        yield context
    finally:
        context.close()


def test_online_folder_is_received_by_pacs_byte_identical(
    product: Product, orthanc_clean: Any, phone: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "CD" / "DICOM"
    paths = write_study(folder, instances=6, instance_bytes=700 * 1024)
    before = uploads_on_server(product)  # the module's earlier tests' uploads
    page = phone.new_page()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    sign_in(page, screenshot=True)

    pick(page, "pick-folder", folder)
    expect(page.get_by_test_id("patient-name")).to_have_text("SYNTHETIC, PATIENT")
    expect(page.get_by_test_id("patient-id")).to_have_text("SYN0001")
    expect(page.get_by_test_id("study-date")).to_have_text("2026-11-25")
    expect(page.get_by_test_id("modality")).to_have_text("CT")
    expect(page.get_by_test_id("file-summary")).to_contain_text("6 files")
    page.get_by_label("Study name").fill("CT head")
    page.get_by_label("Urgent").check()
    page.screenshot(path=str(SCREENSHOTS / "confirm.png"), full_page=True)
    page.get_by_role("button", name="Send to PACS").click()

    study = page.get_by_test_id("study")
    expect(study).to_have_count(1)
    expect(study.get_by_test_id("study-state")).to_have_text(
        "Received by PACS", timeout=RECEIPT_TIMEOUT_MS
    )
    assert_in_orthanc(orthanc_clean, paths)
    assert_no_phi_left(page)
    uploads = product.shell_json(
        "import json; from uploads.models import UploadSession as U; "
        "print(json.dumps([[u.state, u.service_level, u.metadata] for u in "
        f"U.objects.order_by('created_at')[{before}:]]))"
    )
    assert len(uploads) == 1 and uploads[0][0] == "completed" and uploads[0][1] == "urgent", uploads
    assert uploads[0][2]["study_description"] == "CT head", uploads


def uploads_on_server(product: Product) -> int:
    return product.shell_json(
        "from uploads.models import UploadSession as U; print(U.objects.count())"
    )


def test_offline_study_survives_reload_and_reopen_then_uploads_by_itself(
    product: Product, orthanc_clean: Any, phone: Any, tmp_path: Path
) -> None:
    paths = write_study(tmp_path / "study", instances=3, instance_bytes=400 * 1024)
    before = uploads_on_server(product)  # the module's earlier tests' uploads
    page = phone.new_page()
    sign_in(page)
    # The service worker controls the page: the app shell is cached for offline use.
    page.wait_for_function("navigator.serviceWorker.controller !== null")

    # Offline for the pages and the service worker alike: the browser's network is cut, and
    # any API request that still gets out (a service worker's own) is refused here.
    offline = {"on": True}
    leaked: list[str] = []

    def gate(route: Any) -> None:
        if offline["on"]:
            leaked.append(route.request.url)
            route.abort("internetdisconnected")
        else:
            route.continue_()

    phone.route(re.compile(r".*/api/.*"), gate)
    phone.set_offline(True)
    expect(page.get_by_test_id("offline-banner")).to_be_visible()

    pick(page, "pick-files", paths)
    expect(page.get_by_test_id("patient-name")).to_have_text("SYNTHETIC, PATIENT")
    page.get_by_role("button", name="Send to PACS").click()
    state = page.get_by_test_id("study-state")
    expect(state).to_have_text("Waiting for network")
    page.screenshot(path=str(SCREENSHOTS / "offline.png"))

    page.reload()
    expect(page.get_by_test_id("study-state")).to_have_text("Waiting for network")
    page.close()
    page = phone.new_page()
    page.goto("/")
    expect(page.get_by_test_id("study-state")).to_have_text("Waiting for network")
    assert uploads_on_server(product) == before, "something reached the server while offline"

    offline["on"] = False
    phone.set_offline(False)
    expect(page.get_by_test_id("study-state")).to_have_text(
        "Received by PACS", timeout=RECEIPT_TIMEOUT_MS
    )
    assert_in_orthanc(orthanc_clean, paths)
    assert_no_phi_left(page)


CHUNK_URL = re.compile(r"/api/v1/upload/[^/]+/chunk\?index=(\d+)")


def test_connection_lost_mid_upload_resumes_without_resending_acknowledged_chunks(
    product: Product, orthanc_clean: Any, browser: Any, link: CuttableLink, tmp_path: Path
) -> None:
    paths = write_study(tmp_path / "study", instances=10, instance_bytes=1024 * 1024)
    before = uploads_on_server(product)  # the module's earlier tests' uploads
    # Through a relay whose connections can be cut for real, at phone size.
    phone = phone_through(browser, link)
    page = phone.new_page()
    sign_in(page)
    # Every chunk request and every acknowledgement, in the order the browser saw them
    # (the page's and the service worker's requests alike).
    events: list[tuple[str, int]] = []

    def on_request(request: Any) -> None:
        match = CHUNK_URL.search(request.url)
        if match and request.method == "PUT":
            events.append(("sent", int(match.group(1))))

    def on_response(response: Any) -> None:
        match = CHUNK_URL.search(response.url)
        if match and response.request.method == "PUT" and response.status == 200:
            events.append(("acked", int(match.group(1))))

    failed: list[str] = []
    phone.on("request", on_request)
    phone.on("response", on_response)
    phone.on("requestfailed", lambda request: failed.append(request.url))
    # A slow link (about 4 Mbit/s) so that the cut lands in the middle of the upload.
    cdp = phone.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {
            "offline": False,
            "latency": 100,
            "downloadThroughput": 500_000,
            "uploadThroughput": 500_000,
        },
    )

    pick(page, "pick-files", paths)
    expect(page.get_by_test_id("patient-name")).to_have_text("SYNTHETIC, PATIENT")
    page.get_by_role("button", name="Send to PACS").click()

    deadline = time.monotonic() + 60
    while sum(1 for kind, _ in events if kind == "acked") < 3:
        assert time.monotonic() < deadline, events
        page.wait_for_timeout(100)
    page.screenshot(path=str(SCREENSHOTS / "progress.png"))
    failed_before = len(failed)
    link.cut()  # chunks in flight die with their connections
    phone.set_offline(True)  # and the phone notices it lost the network
    acked_before_cut = {i for kind, i in events if kind == "acked"}
    expect(page.get_by_test_id("study-state")).to_have_text("Waiting for network")
    page.wait_for_timeout(3000)
    link.restore()
    phone.set_offline(False)
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )

    expect(page.get_by_test_id("study-state")).to_have_text(
        "Received by PACS", timeout=RECEIPT_TIMEOUT_MS
    )
    assert_in_orthanc(orthanc_clean, paths)
    total = len({i for _, i in events})
    assert len(acked_before_cut) < total, "the cut came after the last chunk"
    first_ack: dict[int, int] = {}
    for position, (kind, index) in enumerate(events):
        if kind == "acked":
            first_ack.setdefault(index, position)
    resent = [
        index
        for position, (kind, index) in enumerate(events)
        if kind == "sent" and index in first_ack and position > first_ack[index]
    ]
    assert resent == [], f"acknowledged chunks sent again: {resent}; {events}"
    # And as the server counted them: every chunk acknowledged before the cut arrived once.
    # This test's upload is the one upload made since it began: resuming made no second one.
    assert uploads_on_server(product) == before + 1
    counts = product.shell_json(
        "import json; from uploads.models import UploadChunk, UploadSession as U; "
        f"mine = U.objects.order_by('created_at')[{before}]; "
        "print(json.dumps({c.index: c.times_received "
        "for c in UploadChunk.objects.filter(session=mine)}))"
    )
    assert {i: counts[str(i)] for i in acked_before_cut} == {i: 1 for i in acked_before_cut}
    assert sorted(first_ack) == list(range(total)), events
    assert len(failed) > failed_before, "no chunk was in flight when the link was cut"
    phone.close()


READ_AUTH = """async () => {
  const db = await new Promise((ok, ko) => {
    const r = indexedDB.open("relaypacs");
    r.onsuccess = () => ok(r.result);
    r.onerror = () => ko(r.error);
  });
  return await new Promise((ok) => {
    const r = db.transaction("auth").objectStore("auth").get("current");
    r.onsuccess = () => { ok(r.result); db.close(); };
  });
}"""

WRITE_AUTH = """async (session) => {
  const db = await new Promise((ok, ko) => {
    const r = indexedDB.open("relaypacs");
    r.onsuccess = () => ok(r.result);
    r.onerror = () => ko(r.error);
  });
  await new Promise((ok) => {
    const t = db.transaction("auth", "readwrite");
    t.objectStore("auth").put(session);
    t.oncomplete = () => { db.close(); ok(); };
  });
}"""


def test_the_queue_belongs_to_its_user_and_survives_an_ended_session(
    product: Product, orthanc_clean: Any, phone: Any, tmp_path: Path
) -> None:
    import requests

    product.manage(
        "createsuperuser",
        "--noinput",
        extra_env={
            "DJANGO_SUPERUSER_USERNAME": "other",
            "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
            "DJANGO_SUPERUSER_EMAIL": "other@example.org",
        },
    )
    paths = write_study(tmp_path / "study", instances=2, instance_bytes=200 * 1024)
    page = phone.new_page()
    sign_in(page)
    page.wait_for_function("navigator.serviceWorker.controller !== null")
    phone.set_offline(True)
    pick(page, "pick-files", paths)
    expect(page.get_by_test_id("patient-name")).to_have_text("SYNTHETIC, PATIENT")
    page.get_by_role("button", name="Send to PACS").click()
    expect(page.get_by_test_id("study-state")).to_have_text("Waiting for network")

    # Signing out with a study still queued asks first.
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("alertdialog")).to_contain_text("1 study is not yet received")
    page.get_by_role("button", name="Stay signed in and finish them").click()
    expect(page.get_by_test_id("study")).to_have_count(1)

    # The server ends the session (its refresh token revoked) and the access token runs out.
    session = page.evaluate(READ_AUTH)
    requests.post(
        f"{product.base}/api/v1/auth/logout", json={"refresh": session["refresh"]}, timeout=10
    ).raise_for_status()
    page.evaluate(WRITE_AUTH, {**session, "access": "expired.e30.x"})
    phone.set_offline(False)
    page.reload()
    expect(page.get_by_text("Your session has ended")).to_be_visible(timeout=30_000)

    # Someone else signs in on the same device: they do not see the first user's queue.
    page.get_by_label("Username").fill("other")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("No studies yet")).to_be_visible()
    expect(page.get_by_test_id("study")).to_have_count(0)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Username")).to_be_visible()
    assert page.evaluate(READ_AUTH) is None  # no tokens left on the device

    # The first user signs in again: the study was kept and goes to the PACS by itself.
    sign_in(page)
    expect(page.get_by_test_id("study-state")).to_have_text(
        "Received by PACS", timeout=RECEIPT_TIMEOUT_MS
    )
    assert_in_orthanc(orthanc_clean, paths)


def test_pause_stops_new_chunks_at_once_and_resume_finishes(
    product: Product, orthanc_clean: Any, phone: Any, tmp_path: Path
) -> None:
    paths = write_study(tmp_path / "study", instances=16, instance_bytes=1024 * 1024)
    page = phone.new_page()
    sign_in(page)
    sent: list[int] = []
    acked: list[int] = []

    def on_request(request: Any) -> None:
        match = CHUNK_URL.search(request.url)
        if match and request.method == "PUT":
            sent.append(int(match.group(1)))

    def on_finished(request: Any) -> None:
        match = CHUNK_URL.search(request.url)
        if match and request.method == "PUT":
            acked.append(int(match.group(1)))

    phone.on("request", on_request)
    phone.on("requestfinished", on_finished)
    phone.on("requestfailed", on_finished)
    cdp = phone.new_cdp_session(page)
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 50, "downloadThroughput": 5e5, "uploadThroughput": 5e5},
    )
    pick(page, "pick-files", paths)
    expect(page.get_by_test_id("patient-name")).to_have_text("SYNTHETIC, PATIENT")
    page.get_by_role("button", name="Send to PACS").click()
    study = page.get_by_test_id("study")
    deadline = time.monotonic() + 60
    while len(acked) < 1:
        assert time.monotonic() < deadline, (sent, acked)
        page.wait_for_timeout(50)

    study.get_by_role("button", name="Pause").click()
    expect(study.get_by_test_id("study-state")).to_have_text("Paused")
    in_flight_at_pause = len(sent)
    deadline = time.monotonic() + 60
    while len(acked) < len(sent):  # chunks already on the way finish
        assert time.monotonic() < deadline, (sent, acked)
        page.wait_for_timeout(50)
    page.wait_for_timeout(2000)
    assert len(sent) == in_flight_at_pause, "a new chunk was sent after Pause"
    total_chunks = json.loads(page.evaluate(DUMP_INDEXEDDB)["relaypacs"]["studies"][0])[
        "totalChunks"
    ]
    assert len(set(sent)) < total_chunks, "everything was already sent before Pause"

    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    study.get_by_role("button", name="Resume").click()
    expect(study.get_by_test_id("study-state")).to_have_text(
        "Received by PACS", timeout=RECEIPT_TIMEOUT_MS
    )
    assert_in_orthanc(orthanc_clean, paths)


def test_a_possible_duplicate_shows_the_servers_words_and_can_be_sent_anyway(
    own_phone: Any, orthanc_clean: Any, tmp_path: Path
) -> None:
    first = write_study(tmp_path / "first", instances=1, instance_bytes=100 * 1024)
    second = write_study(tmp_path / "second", instances=1, instance_bytes=100 * 1024)
    page = own_phone.new_page()
    sign_in(page)
    for paths in (first, second):
        pick(page, "pick-files", paths)
        expect(page.get_by_test_id("patient-name")).to_have_text("SYNTHETIC, PATIENT")
        page.get_by_role("button", name="Send to PACS").click()
    studies = page.get_by_test_id("study")
    expect(studies).to_have_count(2)
    newest = studies.first  # newest on top
    expect(newest.get_by_test_id("study-state")).to_have_text(
        "Needs attention", timeout=RECEIPT_TIMEOUT_MS
    )
    # The server's own message and hint, as it wrote them.
    alert = newest.get_by_role("alert")
    expect(alert).to_contain_text("was already uploaded")
    newest.get_by_role("button", name="Send anyway").click()
    for state in page.get_by_test_id("study-state").all():
        expect(state).to_have_text("Received by PACS", timeout=RECEIPT_TIMEOUT_MS)
    assert_in_orthanc(orthanc_clean, first + second)


def test_background_sync_uploads_with_every_page_closed(
    product: Product, orthanc_clean: Any, phone: Any, tmp_path: Path
) -> None:
    from uploads.tests.helpers import sop_uid

    paths = write_study(tmp_path / "study", instances=3, instance_bytes=300 * 1024)
    page = phone.new_page()
    sign_in(page)
    page.wait_for_function("navigator.serviceWorker.controller !== null")
    offline = {"on": True}

    def gate(route: Any) -> None:
        if offline["on"]:
            route.abort("internetdisconnected")
        else:
            route.continue_()

    phone.route(re.compile(r".*/api/.*"), gate)
    phone.set_offline(True)
    pick(page, "pick-files", paths)
    expect(page.get_by_test_id("patient-name")).to_have_text("SYNTHETIC, PATIENT")
    page.get_by_role("button", name="Send to PACS").click()
    expect(page.get_by_test_id("study-state")).to_have_text("Waiting for network")
    page.close()  # no page of the app is open any more

    offline["on"] = False
    phone.set_offline(False)
    # The browser fires the registered sync when it sees the network back; DevTools can fire
    # it at once (a page on about:blank is not the app and does not upload).
    blank = phone.new_page()
    cdp = phone.new_cdp_session(blank)
    registrations: list[dict[str, Any]] = []
    cdp.on(
        "ServiceWorker.workerRegistrationUpdated",
        lambda event: registrations.extend(event["registrations"]),
    )
    cdp.send("ServiceWorker.enable")
    deadline = time.monotonic() + 30
    while not any(r["scopeURL"].startswith(product.base) for r in registrations):
        assert time.monotonic() < deadline, registrations
        blank.wait_for_timeout(100)
    registration = next(r for r in registrations if r["scopeURL"].startswith(product.base))
    cdp.send(
        "ServiceWorker.dispatchSyncEvent",
        {
            "origin": product.base,
            "registrationId": registration["registrationId"],
            "tag": "relaypacs-upload",
            "lastChance": False,
        },
    )
    expected = {sop_uid(p) for p in paths}
    deadline = time.monotonic() + RECEIPT_TIMEOUT_MS / 1000
    while orthanc_clean.sop_instance_uids() != expected:
        assert time.monotonic() < deadline, "the service worker did not upload the study"
        blank.wait_for_timeout(300)
    assert_in_orthanc(orthanc_clean, paths)

    # Opening the app later shows the receipt and leaves nothing of the patient behind.
    page = phone.new_page()
    page.goto("/")
    expect(page.get_by_test_id("study-state")).to_have_text(
        "Received by PACS", timeout=RECEIPT_TIMEOUT_MS
    )
    assert_no_phi_left(page)


def test_a_cd_of_two_thousand_files_is_read_without_freezing_the_page(
    product: Product, phone: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "CD"
    write_study(folder, instances=2000, instance_bytes=2 * 1024)
    page = phone.new_page()
    sign_in(page)
    pick(page, "pick-folder", folder)
    # Headers are read in a Web Worker: the page keeps answering while it works.
    started = time.monotonic()
    longest = 0.0
    while page.get_by_test_id("patient-name").count() == 0:
        before = time.monotonic()
        page.evaluate("1")
        longest = max(longest, time.monotonic() - before)
        assert time.monotonic() - started < 60, "headers not read within a minute"
    assert longest < 0.5, f"the page froze for {longest:.2f} s"
    expect(page.get_by_test_id("file-summary")).to_contain_text("2000 files")
    page.get_by_text("Files", exact=True).click()
    rows = page.get_by_role("list", name="Files").get_by_role("listitem")
    expect(rows.first).to_be_visible()
    assert rows.count() < 50  # a virtual list: only the rows in view exist
