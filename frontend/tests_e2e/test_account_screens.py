"""The PWA's account screens in Debian's Chromium against the product as `make run` starts
it, with a real SMTP server on this machine receiving the product's emails."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from playwright.sync_api import BrowserContext, Page, expect
from pwa_helpers import (
    PASSWORD,
    MailSink,
    Product,
    link_in,
    product_with_technician,
    totp_code,
)

from uploads.tests.synthetic import write_study

pytestmark = pytest.mark.e2e

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
NEW_PASSWORD = "Harbour-Lantern-Blue-42"
VERIFY_SUBJECT = "Confirm your RelayPACS email address"
RESET_SUBJECT = "Reset your RelayPACS password"
PENDING = "Your account is waiting for an administrator's approval."
MAIL_DEADLINE_SECONDS = 20


@pytest.fixture(scope="module")
def mail() -> Iterator[MailSink]:
    """Every email of the module's product (each test reads its own addresses' mails)."""
    sink = MailSink()
    try:
        yield sink
    finally:
        sink.close()


@pytest.fixture(scope="module")
def product(
    tmp_path_factory: pytest.TempPathFactory, orthanc: Any, frontend_dist: Path, mail: MailSink
) -> Iterator[Product]:
    """One product for the module (starting one costs about 10 s of CPU on the test
    machine's two cores), sending its emails to ``mail``. Tests that change an account
    (its password, email, sessions) change one of their own (``technician``)."""
    with product_with_technician(tmp_path_factory.mktemp("accounts"), orthanc, **mail.env) as product:
        yield product


@dataclass(frozen=True)
class Technician:
    username: str
    email: str


_technicians = itertools.count(1)


@pytest.fixture
def technician(product: Product) -> Technician:
    """A technician account of this test's own, made as the product's first one is
    (`createsuperuser`), with PASSWORD."""
    username = f"tech{next(_technicians)}"
    email = f"{username}@example.org"
    product.manage(
        "createsuperuser",
        "--noinput",
        extra_env={
            "DJANGO_SUPERUSER_USERNAME": username,
            "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
            "DJANGO_SUPERUSER_EMAIL": email,
        },
    )
    return Technician(username, email)


@pytest.fixture
def phone(browser: Any, product: Product) -> Iterator[BrowserContext]:
    context = browser.new_context(
        base_url=product.base,
        viewport={"width": 360, "height": 640},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        accept_downloads=True,
    )
    try:
        yield context
    finally:
        context.close()


def wait_for_mails(mail: MailSink, to: str, subject: str, *, count: int) -> None:
    """Poll until ``count`` mails to ``to`` with ``subject`` arrived (the sink keeps all)."""
    deadline = time.monotonic() + MAIL_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        with mail.lock:
            arrived = sum(1 for m in mail.messages if (m["To"], m["Subject"]) == (to, subject))
        if arrived >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{arrived} of {count} mails {subject!r} to {to} arrived")


def sign_in(page: Page, username: str, password: str) -> None:
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Sign in").click()


def open_settings(page: Page) -> None:
    page.get_by_role("button", name="Settings").click()
    expect(page.get_by_role("heading", name="Settings")).to_be_focused()


def api_login(product: Product, username: str, password: str, device: str) -> str:
    """Sign in another device through the API; returns its refresh token."""
    answer = requests.post(
        f"{product.base}/api/v1/auth/login",
        json={"username": username, "password": password},
        headers={"User-Agent": device},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["refresh"]


def refresh_works(product: Product, refresh: str) -> bool:
    answer = requests.post(
        f"{product.base}/api/v1/auth/refresh", json={"refresh": refresh}, timeout=10
    )
    return answer.status_code == 200


def test_a_new_account_is_confirmed_by_email_and_signs_in_with_two_step_codes(
    product: Product, mail: MailSink, phone: BrowserContext
) -> None:
    page = phone.new_page()
    page.goto("/")
    page.get_by_role("link", name="Create an account").click()
    expect(page.get_by_role("heading", name="Create an account")).to_be_focused()
    page.get_by_label("Username").fill("nurse.ada")
    page.get_by_label("Email").fill("ada@clinic.example")
    page.get_by_label("Full name").fill("Ada Lovelace")

    # The server's password rules, each one broken, are shown as it words them.
    page.get_by_label("Password", exact=True).fill("lovelace")
    page.get_by_role("button", name="Create account").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("not strong enough")
    expect(alert.get_by_role("listitem").filter(has_text="too short")).to_have_count(1)

    page.get_by_label("Password", exact=True).fill(NEW_PASSWORD)
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("heading", name="Check your email")).to_be_visible()
    expect(page.get_by_test_id("check-email")).to_contain_text("ada@clinic.example")

    # Before the address is confirmed, signing in is refused with the words of a wrong
    # password (so a prober cannot tell whether a registration made an account); the server
    # sends the confirmation email again, and the screen offers it again under the error.
    page.get_by_role("button", name="Back to sign in").click()
    sign_in(page, "nurse.ada", NEW_PASSWORD)
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("username or password is not correct")
    expect(alert).to_contain_text("not confirmed yet")
    wait_for_mails(mail, "ada@clinic.example", VERIFY_SUBJECT, count=2)
    resend = page.get_by_role("form", name="Send the confirmation email again")
    resend.get_by_label("Email").fill("ada@clinic.example")
    resend.get_by_role("button", name="Send again").click()
    expect(resend.get_by_role("status")).to_have_text(
        "If an unconfirmed account uses this address, an email is on its way."
    )
    wait_for_mails(mail, "ada@clinic.example", VERIFY_SUBJECT, count=3)

    path, query = link_in(mail.wait_for("ada@clinic.example", VERIFY_SUBJECT))
    assert path == "/verify-email", path
    page.goto(f"{path}?{urlencode(query)}")
    expect(page.get_by_role("status")).to_have_text(
        "Your email address is confirmed. You can sign in now."
    )
    page.get_by_role("button", name="Sign in").click()
    assert page.url == f"{product.base}/", page.url
    sign_in(page, "nurse.ada", NEW_PASSWORD)
    # Self-registered, it waits for an administrator before it can send studies.
    expect(page.get_by_test_id("role-notice")).to_contain_text(PENDING)
    expect(page.get_by_role("button", name="Upload study")).to_have_count(0)

    # Two-step sign-in: the password, then the first code of the app from the otpauth URI.
    open_settings(page)
    twofactor = page.get_by_test_id("twofactor")
    expect(twofactor.get_by_test_id("twofactor-status")).to_contain_text("Off.")
    twofactor.get_by_role("button", name="Set up two-step sign-in").click()
    twofactor.get_by_label("Your password").fill(NEW_PASSWORD)
    twofactor.get_by_role("button", name="Continue").click()
    expect(twofactor.get_by_role("img", name="QR code")).to_be_visible()
    twofactor.get_by_text("Cannot scan the code?").click()
    uri = twofactor.get_by_test_id("otpauth-uri").inner_text()
    assert uri.startswith("otpauth://totp/"), uri
    twofactor.get_by_label("Code from the app").fill(totp_code(uri))
    twofactor.get_by_role("button", name="Turn on two-step sign-in").click()

    codes = twofactor.get_by_test_id("backup-codes").get_by_role("listitem")
    expect(codes).to_have_count(10)
    shown = [c.strip() for c in codes.all_inner_texts()]
    with page.expect_download() as download:
        twofactor.get_by_role("button", name="Download the codes").click()
    saved = Path(download.value.path()).read_text()
    assert all(code in saved.splitlines() for code in shown), saved
    twofactor.get_by_role("button", name="I have saved them").click()
    expect(twofactor.get_by_test_id("twofactor-status")).to_have_text("On. 10 backup codes left.")

    # Signed out, signing in asks for the code; the app's next code lets the user in.
    page.get_by_role("button", name="Back to studies").click()
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, "nurse.ada", NEW_PASSWORD)
    page.get_by_label("One-time code").fill(totp_code(uri, steps_ahead=1))
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("role-notice")).to_contain_text(PENDING)


def test_a_forgotten_password_is_reset_from_the_emailed_link_even_opened_offline_first(
    product: Product, mail: MailSink, phone: BrowserContext, technician: Technician
) -> None:
    page = phone.new_page()
    page.goto("/")
    page.get_by_role("link", name="Forgot your password?").click()
    page.get_by_label("Email").fill(technician.email)
    page.get_by_role("button", name="Email me a reset link").click()
    expect(page.get_by_role("status")).to_contain_text("reset link is on its way")
    path, query = link_in(mail.wait_for(technician.email, RESET_SUBJECT))
    assert path == "/reset-password", path
    reset = f"{path}?{urlencode(query)}"

    # Once the service worker holds the app shell, the emailed page opens without a network
    # and says what it needs.
    page.wait_for_function("navigator.serviceWorker.controller !== null")
    phone.set_offline(True)
    page.goto(reset)
    expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
    page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    page.get_by_label("New password again").fill(NEW_PASSWORD)
    page.get_by_role("button", name="Save the new password").click()
    expect(page.get_by_role("alert")).to_contain_text("needs the network")
    phone.set_offline(False)

    # Django serves the page too (no service worker in this new context).
    fresh = phone.browser.new_context(base_url=product.base)
    try:
        page = fresh.new_page()
        page.goto(reset)
        page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
        page.get_by_label("New password again").fill(NEW_PASSWORD)
        page.get_by_role("button", name="Save the new password").click()
        expect(page.get_by_role("status")).to_contain_text("Your password is changed.")
        page.get_by_role("button", name="Sign in").click()
        sign_in(page, technician.username, NEW_PASSWORD)
        expect(page.get_by_role("button", name="Upload study")).to_be_visible()
    finally:
        fresh.close()


def test_preferences_persist_and_other_devices_can_be_signed_out(
    product: Product, phone: BrowserContext, tmp_path: Path, technician: Technician
) -> None:
    page = phone.new_page()
    page.goto("/")
    sign_in(page, technician.username, PASSWORD)
    open_settings(page)

    preferences = page.get_by_test_id("preferences")
    preferences.get_by_label("Emergency").check()
    preferences.get_by_text("Advanced").click()
    preferences.get_by_label("Piece size").select_option(
        label="Larger pieces for fast, steady networks (4 MB)"
    )
    preferences.get_by_label("Warn before sending a study the server already has").uncheck()
    preferences.get_by_role("button", name="Save preferences").click()
    expect(preferences.get_by_role("status")).to_have_text("Preferences saved.")

    page.reload()
    preferences = page.get_by_test_id("preferences")
    expect(preferences.get_by_label("Emergency")).to_be_checked()
    expect(preferences.get_by_label("Piece size")).to_have_value(str(4 * 1024 * 1024))
    expect(
        preferences.get_by_label("Warn before sending a study the server already has")
    ).not_to_be_checked()
    saved = product.shell_json(
        "import json; from accounts.models import User; "
        f"u = User.objects.get(username={technician.username!r}); "
        "print(json.dumps([u.default_service_level, u.default_chunk_size, "
        "u.duplicate_detection]))"
    )
    assert saved == ["emergency", 4 * 1024 * 1024, False], saved

    # Devices: this one is marked; another, signed in through the API, is signed out here.
    other = api_login(product, technician.username, PASSWORD, "OtherDevice/1.0")
    sessions = page.get_by_test_id("sessions")
    sessions.get_by_role("button", name="Refresh the list").click()
    rows = sessions.get_by_test_id("session")
    expect(rows).to_have_count(2)
    current = sessions.locator('[data-testid="session"][data-current="true"]')
    expect(current).to_have_count(1)
    expect(current).to_contain_text("This device")
    expect(current.get_by_role("button")).to_have_count(0)
    row = rows.filter(has_text="OtherDevice/1.0")
    row.get_by_role("button", name="Sign out this device").click()
    expect(rows).to_have_count(1)
    expect(rows.filter(has_text="OtherDevice/1.0")).to_have_count(0)
    assert not refresh_works(product, other)

    # "Sign out everywhere else" ends the rest and keeps this device signed in.
    others = [api_login(product, technician.username, PASSWORD, f"Device{n}/1.0") for n in range(2)]
    sessions.get_by_role("button", name="Refresh the list").click()
    expect(rows).to_have_count(3)
    sessions.get_by_role("button", name="Sign out everywhere else").click()
    expect(sessions.get_by_role("status")).to_have_text("2 other devices are signed out.")
    expect(rows).to_have_count(1)
    assert not any(refresh_works(product, r) for r in others)
    page.reload()
    expect(page.get_by_test_id("sessions").get_by_test_id("session")).to_have_count(1)

    # A new password signs every other device out and keeps this one.
    laptop = api_login(product, technician.username, PASSWORD, "Laptop/1.0")
    password = page.get_by_test_id("password")
    password.get_by_role("button", name="Change your password").click()
    password.get_by_label("Current password").fill(PASSWORD)
    password.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
    password.get_by_label("New password again").fill(NEW_PASSWORD)
    password.get_by_role("button", name="Change password").click()
    expect(password.get_by_role("status")).to_have_text(
        "Your password is changed. 1 other device was signed out."
    )
    assert not refresh_works(product, laptop)
    expect(page.get_by_test_id("sessions").get_by_test_id("session")).to_have_count(1)

    # The data export downloads as a JSON file.
    with page.expect_download() as download:
        page.get_by_role("button", name="Download my data").click()
    assert download.value.suggested_filename == "relaypacs-my-data.json"
    assert '"default_service_level": "emergency"' in Path(download.value.path()).read_text()

    # A new study starts at the default service level.
    page.get_by_role("button", name="Back to studies").click()
    page.get_by_role("button", name="Upload study").click()
    page.get_by_test_id("pick-files").set_input_files(
        write_study(tmp_path / "study", instances=1, instance_bytes=10 * 1024)
    )
    expect(page.get_by_label("Emergency")).to_be_checked()


def test_changing_the_email_and_setting_up_two_step_sign_in_need_the_password(
    product: Product, mail: MailSink, phone: BrowserContext, technician: Technician
) -> None:
    new_email = f"{technician.username}.new@example.org"
    page = phone.new_page()
    page.goto("/")
    sign_in(page, technician.username, PASSWORD)
    open_settings(page)

    profile = page.get_by_test_id("profile")
    profile.get_by_label("Email").fill(new_email)
    profile.get_by_label("Current password").fill("not the password")
    profile.get_by_role("button", name="Save profile").click()
    expect(profile.get_by_role("alert")).to_contain_text("current password is not correct")
    profile.get_by_label("Current password").fill(PASSWORD)
    profile.get_by_role("button", name="Save profile").click()
    expect(profile.get_by_role("status")).to_contain_text(
        f"An email is on its way to {new_email}"
    )
    mail.wait_for(new_email, VERIFY_SUBJECT)

    twofactor = page.get_by_test_id("twofactor")
    twofactor.get_by_role("button", name="Set up two-step sign-in").click()
    twofactor.get_by_label("Your password").fill("not the password")
    twofactor.get_by_role("button", name="Continue").click()
    expect(twofactor.get_by_role("alert")).to_contain_text("current password is not correct")
    expect(twofactor.get_by_role("img", name="QR code")).to_have_count(0)


def test_a_radiologist_is_told_why_there_is_no_upload(product: Product, phone: BrowserContext):
    product.shell_json(
        "import json; from accounts.models import User; "
        "User.objects.create_user(username='rad', email='rad@example.org', "
        f"password={PASSWORD!r}, role='radiologist', email_verified=True); print(json.dumps(1))"
    )
    page = phone.new_page()
    page.goto("/")
    sign_in(page, "rad", PASSWORD)
    expect(page.get_by_test_id("role-notice")).to_contain_text("radiologist account")
    expect(page.get_by_test_id("pick-files")).to_have_count(0)
    page.close()
