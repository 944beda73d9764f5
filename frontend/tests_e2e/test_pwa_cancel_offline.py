"""A cancel tapped offline (often a wrong-patient study) is queued on the device like an
upload and reaches the server when the network is back: Debian's Chromium driving the built
app, served by `manage.py serve`, through a link that is cut for real."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect
from pwa_helpers import CuttableLink, Product, acknowledged_chunks, phone_through, slow_link
from test_pwa_e2e import CHUNK_URL, DUMP_INDEXEDDB, assert_no_phi_left, pick, sign_in

from uploads.tests.synthetic import write_study

pytestmark = pytest.mark.e2e

# The server confirms the cancel within a round of the uploader once the link is back.
CANCEL_CONFIRMED_MS = 60_000
SERVER_DEADLINE_SECONDS = 30


def upload_states(product: Product) -> list[str]:
    return product.shell_json(
        "import json; from uploads.models import UploadSession as U; "
        "print(json.dumps([u.state for u in U.objects.all()]))"
    )


def stored_blobs(page: Any) -> int:
    return len(page.evaluate(DUMP_INDEXEDDB)["relaypacs"]["blobs"])


def test_a_cancel_tapped_offline_reaches_the_server_when_the_network_is_back(
    product: Product, orthanc_clean: Any, browser: Any, link: CuttableLink, tmp_path: Path
) -> None:
    paths = write_study(tmp_path / "study", instances=10, instance_bytes=1024 * 1024)
    phone = phone_through(browser, link)
    page = phone.new_page()
    sign_in(page)
    # The service worker controls the page: the app reloads with the link cut.
    page.wait_for_function("navigator.serviceWorker.controller !== null")
    acked = acknowledged_chunks(phone, CHUNK_URL)
    # A slow link (about 4 Mbit/s), so that the upload is under way when the link is cut.
    slow_link(phone, page)
    pick(page, "pick-files", paths)
    expect(page.get_by_test_id("patient-name")).to_have_text("SYNTHETIC, PATIENT")
    page.get_by_role("button", name="Send to PACS").click()
    deadline = time.monotonic() + 60
    while len(acked) < 2:
        assert time.monotonic() < deadline, acked
        page.wait_for_timeout(100)

    link.cut()
    phone.set_offline(True)
    study = page.get_by_test_id("study")
    expect(study.get_by_test_id("study-state")).to_have_text("Waiting for network")
    study.get_by_role("button", name="Cancel").click()
    study.get_by_role("button", name="Yes, cancel it").click()
    expect(study.get_by_test_id("study-state")).to_have_text("Cancelling…")
    expect(study.get_by_test_id("cancel-note")).to_contain_text(
        "sent as soon as the network is back"
    )
    # The device keeps the study until the server confirmed; the server has not heard yet.
    assert stored_blobs(page) == len(paths)
    assert upload_states(product) == ["receiving"]

    # Reloaded while offline, the cancel is still queued.
    page.reload()
    study = page.get_by_test_id("study")
    expect(study.get_by_test_id("study-state")).to_have_text("Cancelling…")
    assert stored_blobs(page) == len(paths)
    record = json.loads(page.evaluate(DUMP_INDEXEDDB)["relaypacs"]["studies"][0])
    assert record["state"] == "cancelling" and record["uploadId"], record

    link.restore()
    phone.set_offline(False)
    expect(study.get_by_test_id("study-state")).to_have_text(
        "Cancelled", timeout=CANCEL_CONFIRMED_MS
    )
    deadline = time.monotonic() + SERVER_DEADLINE_SECONDS
    while upload_states(product) != ["cancelled"]:
        assert time.monotonic() < deadline, upload_states(product)
        time.sleep(0.2)
    assert orthanc_clean.sop_instance_uids() == set(), "the cancelled study reached the PACS"
    assert_no_phi_left(page)
    phone.close()
