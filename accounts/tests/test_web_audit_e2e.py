"""The auditor's page in Debian's Chromium (Playwright) against the product as `make run`
starts it (`manage.py serve`: uvicorn, a Celery worker and beat, SQLite).

An auditor bound to a facility signs in with a TOTP code, filters the trail (event type
and outcome), sees only their facility's events, downloads the CSV and the JSON, and each
download is in the trail afterwards. docs/screenshots/audit-trail-desktop.png (1280×800)
is taken here.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from uploads.tests.product import REPO, RunningProduct, manage, running_product, totp_now

pytestmark = pytest.mark.e2e

SCREENSHOTS = REPO / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu"]
DESKTOP = {"width": 1280, "height": 800}
PASSWORD = "Quiet-Harbour-Auditing-58"  # noqa: S105 (an account of the test product only)
BROWSER_TIMEOUT_MS = 120_000

SETUP = f"""
import json
from django_otp.plugins.otp_totp.models import TOTPDevice
from accounts.models import Facility, Role, User
harbour = Facility.objects.create(name="Harbour Clinic", code="harbour")
hill = Facility.objects.create(name="Hill Clinic", code="hill")
for name, clinic in (("hana", harbour), ("hugo", harbour), ("hilda", hill)):
    User.objects.create_user(name, f"{{name}}@example.org", {PASSWORD!r},
        role=Role.RADIOGRAPHER, facility=clinic, full_name=name.title())
auditor = User.objects.create_user("audrey", "audrey@example.org", {PASSWORD!r},
    role=Role.AUDITOR, facility=harbour, full_name="Audrey Auditor")
device = TOTPDevice.objects.create(user=auditor, name="authenticator", confirmed=True)
print(json.dumps({{"key": device.key}}))
"""
EXPORTS_AUDITED = """
import json
from accounts.models import AuditEvent
print(json.dumps([e.detail["filters"].get("format") for e in
    AuditEvent.objects.filter(action="audit_log_used").order_by("id")]))
"""


def last_json(output: str) -> Any:
    return json.loads(output.strip().splitlines()[-1])


@pytest.fixture
def product(tmp_path: Path, orthanc: Any) -> Iterator[RunningProduct]:
    with running_product(tmp_path, orthanc) as running:
        yield running


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def sign_ins(product: RunningProduct) -> None:
    """Sign-ins through the API: successes, and wrong passwords (minor failures)."""
    for username, password in [
        ("hana", PASSWORD),
        ("hugo", PASSWORD),
        ("hana", "not-her-password"),
        ("hugo", "not-his-password"),
        ("hilda", PASSWORD),
        ("hilda", "not-her-password"),
    ]:
        answer = requests.post(
            f"{product.base}/api/v1/auth/login",
            json={"username": username, "password": password},
            timeout=30,
        )
        assert answer.status_code in (200, 401), answer.text


def test_an_auditor_signs_in_with_totp_filters_the_trail_and_downloads_it(
    product: RunningProduct, browser: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    key = last_json(manage(product, "shell", "--no-imports", "-c", SETUP))["key"]
    sign_ins(product)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    context = browser.new_context(base_url=product.base, viewport=DESKTOP, accept_downloads=True)
    context.set_default_timeout(BROWSER_TIMEOUT_MS)
    page = context.new_page()
    page.goto("/audit/")
    expect(page).to_have_url(f"{product.base}/accounts/login/?next=%2Faudit%2F")
    page.get_by_label("Username").fill("audrey")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_label("Two-step sign-in code").fill(totp_now(key))
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{product.base}/audit/")
    expect(page.get_by_role("heading", name="Audit trail")).to_be_visible()
    expect(page.locator(".lede")).to_contain_text("Harbour Clinic")

    # Harbour only: Hill's sign-ins are never listed.
    table = page.locator("table.audit")
    expect(table).to_contain_text("hana")
    expect(table).not_to_contain_text("hilda")

    # Sign-ins that succeeded: Hana's, Hugo's and the auditor's own (a wrong password
    # names no known account, so it is filed under no facility).
    page.get_by_label("Event type").select_option("login")
    page.get_by_label("Outcome").select_option(label="Success")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.audit tbody tr")
    expect(rows).to_have_count(3)
    expect(table).not_to_contain_text("login_failed")
    expect(page.locator(".downloads")).to_contain_text("3 events match")
    page.get_by_label("Event type").focus()  # no hover or focus ring on a row
    page.screenshot(path=str(SCREENSHOTS / "audit-trail-desktop.png"))

    with page.expect_download() as csv_download:
        page.get_by_role("link", name="Download CSV").click()
    csv_rows = list(csv.DictReader(Path(csv_download.value.path()).open()))
    assert [(r["action"], r["username"], r["facility"]) for r in csv_rows] == [
        ("login", "hana", "harbour"),
        ("login", "hugo", "harbour"),
        ("login", "audrey", "harbour"),
    ]
    with page.expect_download() as json_download:
        page.get_by_role("link", name="Download JSON").click()
    events = json.loads(Path(json_download.value.path()).read_text())
    assert [e["username"] for e in events] == ["hana", "hugo", "audrey"]
    assert all(e["outcome"] == "Success" for e in events)

    # Each download is in the trail itself.
    assert last_json(manage(product, "shell", "--no-imports", "-c", EXPORTS_AUDITED)) == [
        "csv",
        "json",
    ]
    page.goto("/audit/?action=audit_log_used")
    expect(page.locator("table.audit tbody tr")).to_have_count(2)

    # On a phone the trail's table scrolls sideways in its box, the page does not.
    phone = browser.new_context(
        base_url=product.base,
        viewport={"width": 390, "height": 844},
        storage_state=context.storage_state(),
        is_mobile=True,
    )
    phone.set_default_timeout(BROWSER_TIMEOUT_MS)
    small = phone.new_page()
    small.goto("/audit/")
    expect(small.locator("table.audit tbody tr").first).to_be_visible()
    assert small.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    ), small.evaluate("document.documentElement.scrollWidth")
    box = small.locator(".table-scroll").evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert box[0] > box[1], box  # the table is wider than the phone: it scrolls in its box
    small.screenshot(path=str(SCREENSHOTS / "audit-trail-phone.png"))
    phone.close()
    context.close()
