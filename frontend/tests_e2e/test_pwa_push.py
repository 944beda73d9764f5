"""Web Push, the app icon's badge and the "This device" settings end to end: Debian's
Chromium driving the built app, served by `manage.py serve` (a real Celery worker sends
the pushes), into a real Orthanc reached through a link the test can cut, with the one
stand-in of the push tests (notifications/tests/push_service.py) playing the browser
vendor's push service, which cannot be reached from here (docs/notifications.md, "Web
Push").

What is real: the server's VAPID-signed, aes128gcm-encrypted push to the stand-in (which
checks and decrypts it), the service worker's `push` and `notificationclick` handlers in
Chromium (the decrypted payload delivered with the DevTools protocol's
`ServiceWorker.deliverPushMessage`), the notification shown (`getNotifications()`), the
page's router. What is not: `pushManager.subscribe()`/`getSubscription()` are stubbed in
the page (STUB_PUSH_MANAGER) to hand over the stand-in's subscription, since Chromium's
own would need Google's push service; `setAppBadge` is spied on (Linux shows no badge); a
notification "click" is the `notificationclick` event dispatched in the service worker
(focusing a window is then refused, as it is without a real click, and the page's route is
what is asserted), and so is `pushsubscriptionchange`, which Chromium never sends."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, expect
from pwa_helpers import CuttableLink, Product, product_with_technician
from test_pwa_e2e import DUMP_INDEXEDDB, RECEIPT_TIMEOUT_MS, SCREENSHOTS, pick, sign_in
from test_pwa_notifications import send_study, through
from test_pwa_reports import DESKTOP, PHONE, Api

from notifications.tests.push_service import PushService, serve_push_service
from uploads.tests.synthetic import write_study

pytestmark = pytest.mark.e2e

# The server's Celery worker sends a push within a second or two of the notification.
PUSH_TIMEOUT_SECONDS = 60
SW_TIMEOUT_SECONDS = 20

# The page's pushManager hands over the stand-in's subscription (made with the key the app
# passes); kept in localStorage like a real one, which outlives a reload. Records each call.
STUB_PUSH_MANAGER = """
(() => {
  const subscription = __SUBSCRIPTION__;
  const STORE = "test-push-stub-key";
  const calls = () => JSON.parse(localStorage.getItem("test-push-stub-calls") || "[]");
  const record = (call) => localStorage.setItem("test-push-stub-calls", JSON.stringify([...calls(), call]));
  const b64url = (bytes) => btoa(String.fromCharCode(...bytes)).replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
  const made = (key) => ({
    endpoint: subscription.endpoint,
    expirationTime: null,
    options: { userVisibleOnly: true, applicationServerKey: new Uint8Array(key).buffer },
    toJSON: () => subscription,
    getKey: () => null,
    unsubscribe: async () => { localStorage.removeItem(STORE); record("unsubscribe"); return true; },
  });
  PushManager.prototype.getSubscription = async function () {
    const key = localStorage.getItem(STORE);
    return key ? made(JSON.parse(key)) : null;
  };
  PushManager.prototype.subscribe = async function (options) {
    const key = Array.from(new Uint8Array(options.applicationServerKey.buffer || options.applicationServerKey));
    record({ userVisibleOnly: options.userVisibleOnly, key: b64url(key) });
    localStorage.setItem(STORE, JSON.stringify(key));
    return made(key);
  };
})();
"""

# The page's Badging API calls, recorded (and passed on).
SPY_PAGE_BADGE = """
(() => {
  window.__badge = [];
  const set = navigator.setAppBadge ? navigator.setAppBadge.bind(navigator) : null;
  const clear = navigator.clearAppBadge ? navigator.clearAppBadge.bind(navigator) : null;
  navigator.setAppBadge = (n) => { window.__badge.push(n); return set ? set(n).catch(() => {}) : Promise.resolve(); };
  navigator.clearAppBadge = () => { window.__badge.push("clear"); return clear ? clear().catch(() => {}) : Promise.resolve(); };
})();
"""

# The same in the service worker's scope (evaluated there once it runs).
SPY_WORKER_BADGE = """() => {
  self.__badge = [];
  navigator.setAppBadge = (n) => { self.__badge.push(n); return Promise.resolve(); };
  navigator.clearAppBadge = () => { self.__badge.push("clear"); return Promise.resolve(); };
  return typeof navigator.setAppBadge;
}"""

WORKER_NOTIFICATIONS = """() => self.registration.getNotifications().then((list) =>
  list.map((n) => ({ title: n.title, body: n.body, tag: n.tag, url: n.data && n.data.url })))"""

# What the browser does when the user clicks the notification: its `notificationclick`.
WORKER_CLICK = """async () => {
  const [notification] = await self.registration.getNotifications();
  self.dispatchEvent(new NotificationEvent("notificationclick", { notification }));
  return notification.data.url;
}"""

# What the browser does when its push service replaced the subscription.
SUBSCRIPTION_CHANGE = """(subscription) => {
  const event = new ExtendableEvent("pushsubscriptionchange");
  Object.defineProperty(event, "oldSubscription", { value: null });
  Object.defineProperty(event, "newSubscription", { value: { toJSON: () => subscription } });
  try {
    self.dispatchEvent(event);
  } catch (error) {
    // waitUntil() refuses an event not sent by the browser; the handler ran.
  }
}"""

# Clearing waits this long for the upload engine to let go of the queue (signOut.ts).
UPLOADER_STOP_MS = 5000

# A study another account queued on this device and did not send: the tech's queued study
# copied, as the nurse's.
ANOTHER_ACCOUNTS_STUDY = """() => new Promise((ok, ko) => {
  const open = indexedDB.open("relaypacs");
  open.onerror = () => ko(open.error);
  open.onsuccess = () => {
    const db = open.result;
    const store = db.transaction("studies", "readwrite").objectStore("studies");
    const all = store.getAll();
    all.onsuccess = () => {
      const { id, ...study } = all.result.find((s) => s.state === "queued");
      const add = store.add({ ...study, owner: "nurse" });
      add.onsuccess = () => { db.close(); ok(add.result); };
      add.onerror = () => ko(add.error);
    };
  };
})"""

# The upload lock (uploader.ts UPLOADER_LOCK) taken and kept, as a running uploader keeps it,
# until `__releaseUploaderLock()`; queued behind this page's own uploader, which lets go of
# it when clearing stops it.
HOLD_UPLOADER_LOCK = """() => {
  navigator.locks.request("relaypacs-uploader", () => new Promise((release) => {
    window.__releaseUploaderLock = release;
  }));
}"""

PAGE_NOTIFICATIONS = """() => navigator.serviceWorker.ready.then((r) => r.getNotifications())
  .then((list) => list.map((n) => ({ title: n.title, url: n.data && n.data.url })))"""


@pytest.fixture(scope="module")
def push_service() -> Iterator[PushService]:
    service, server = serve_push_service()
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def pacs_link(orthanc: Any) -> Iterator[CuttableLink]:
    orthanc.start()
    relay = CuttableLink(urlsplit(orthanc.url).port)
    try:
        yield relay
    finally:
        relay.close()


@pytest.fixture(scope="module")
def product(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc: Any,
    pacs_link: CuttableLink,
    push_service: PushService,
    frontend_dist: Path,
) -> Iterator[Product]:
    """One product for the module, its PACS behind a cuttable link, taking subscriptions to
    the stand-in's http://127.0.0.1 endpoints; the technician's duplicate check off (every
    study here is the same synthetic patient)."""
    with product_with_technician(
        tmp_path_factory.mktemp("push"),
        orthanc,
        PACS_DICOMWEB_URL=through(pacs_link, orthanc.dicomweb_url),
        PACS_ORTHANC_URL=through(pacs_link, orthanc.url),
        PACS_RETRY_BASE_SECONDS="2",
        PACS_RETRY_MAX_SECONDS="4",
        WEB_PUSH_ALLOW_INSECURE_ENDPOINTS="true",
    ) as product:
        product.shell_json(
            "from accounts.models import User; "
            "print(User.objects.filter(username='tech').update(duplicate_detection=False))"
        )
        push_service.vapid_public_key = Api(product, "tech").get(
            "/notifications/push-subscriptions"
        )["vapid_public_key"]
        yield product


def new_context(browser: Any, product: Product, service: PushService, device: str) -> Any:
    context = browser.new_context(
        base_url=product.base, viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    stub = STUB_PUSH_MANAGER.replace("__SUBSCRIPTION__", json.dumps(service.subscription(device)))
    context.add_init_script(stub)
    context.add_init_script(SPY_PAGE_BADGE)
    return context


def worker_ready(page: Page) -> None:
    """The service worker is active and controls the page."""
    page.evaluate("navigator.serviceWorker.ready.then(() => true)")
    page.wait_for_function("navigator.serviceWorker.controller !== null")


def the_worker(context: Any) -> Any:
    deadline = time.monotonic() + SW_TIMEOUT_SECONDS
    while not context.service_workers:
        assert time.monotonic() < deadline, "no service worker"
        time.sleep(0.1)
    return context.service_workers[0]


def subscriptions(product: Product) -> list[list[Any]]:
    return product.shell_json(
        "import json; from notifications.models import PushSubscription as P; "
        "print(json.dumps([[p.endpoint, p.user.username] for p in P.objects.all()]))"
    )


def hide_toasts(page: Page) -> None:
    toasts = page.get_by_test_id("toast")
    while toasts.count():
        toasts.first.get_by_role("button", name="Close").click()


def screenshots(target: Any, page: Page, name: str) -> None:
    """``target`` (the page or one element) at phone size (390×844) and on a desktop."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    options = {"full_page": True} if target is page else {}
    target.screenshot(path=str(SCREENSHOTS / f"{name}.png"), **options)
    page.set_viewport_size(DESKTOP)
    target.screenshot(path=str(SCREENSHOTS / f"{name}-desktop.png"), **options)
    page.set_viewport_size(PHONE)


def registration_id(cdp: Any, page: Page, scope: str) -> str:
    """The service worker's registration id, from the DevTools protocol's events (which the
    sync API hands over while it waits on ``page``)."""
    found: list[dict[str, Any]] = []
    cdp.on("ServiceWorker.workerRegistrationUpdated", lambda e: found.extend(e["registrations"]))
    cdp.send("ServiceWorker.enable")
    deadline = time.monotonic() + SW_TIMEOUT_SECONDS
    while True:
        for registration in found:
            if registration["scopeURL"] == scope and not registration.get("isDeleted"):
                return str(registration["registrationId"])
        assert time.monotonic() < deadline, found
        page.wait_for_timeout(100)


def poll(fetch: Any, done: Any, timeout: float = SW_TIMEOUT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    value = fetch()
    while not done(value):
        assert time.monotonic() < deadline, f"not done in {timeout} s: {value}"
        time.sleep(0.2)
        value = fetch()
    return value


def test_the_offer_follows_the_first_study_and_a_push_with_the_app_closed_is_shown_badged_and_opens_the_study(
    product: Product,
    push_service: PushService,
    pacs_link: CuttableLink,
    browser: Any,
    tmp_path: Path,
) -> None:
    context = new_context(browser, product, push_service, "phone")
    page = context.new_page()
    sign_in(page)
    worker_ready(page)
    # Never on first load, nor before anything was sent.
    page.reload()
    expect(page.get_by_role("button", name="Upload study")).to_be_visible()
    expect(page.get_by_test_id("push-offer")).to_have_count(0)

    # The first study reaches the server: the card says why before the browser asks.
    send_study(page, tmp_path / "one" / "DICOM", "CT head")
    offer = page.get_by_test_id("push-offer")
    expect(offer).to_be_visible(timeout=RECEIPT_TIMEOUT_MS)
    expect(offer).to_contain_text(
        "Get told when your study reaches the hospital or a radiologist asks a question, "
        "even when the app is closed."
    )
    expect(page.get_by_test_id("study-state")).to_have_text(
        "Received by PACS", timeout=RECEIPT_TIMEOUT_MS
    )
    hide_toasts(page)
    screenshots(page, page, "pwa-push-offer")

    # "Turn on": the browser's permission (granted here as a user would), the subscription
    # with the server's key, sent to the server.
    context.grant_permissions(["notifications"], origin=product.base)
    offer.get_by_role("button", name="Turn on").click()
    expect(page.get_by_test_id("push-offer-outcome")).to_contain_text(
        "Notifications are on for this device."
    )
    calls = page.evaluate("JSON.parse(localStorage.getItem('test-push-stub-calls'))")
    assert calls == [{"userVisibleOnly": True, "key": push_service.vapid_public_key}], calls
    assert subscriptions(product) == [[push_service.endpoint("phone"), "tech"]]

    # A second study waits for the PACS; the app is closed; then the PACS takes it.
    pacs_link.cut()
    page.get_by_role("button", name="Dismiss this study (the history keeps it)").click()
    send_study(page, tmp_path / "two" / "DICOM", "CT chest")
    expect(page.get_by_test_id("study-state")).to_have_text(
        "Sending to PACS", timeout=RECEIPT_TIMEOUT_MS
    )
    blank = context.new_page()  # the DevTools session lives on a page that is not the app
    cdp = context.new_cdp_session(blank)
    registration = registration_id(cdp, blank, f"{product.base}/")
    worker = the_worker(context)
    assert worker.evaluate(SPY_WORKER_BADGE) == "function"
    page.close()
    pacs_link.restore()

    # The server's push, checked and decrypted by the stand-in, says nothing of the patient.
    [push] = push_service.wait_for("phone", timeout=PUSH_TIMEOUT_SECONDS)
    assert push_service.problems == []
    upload_id = product.shell_json(
        "import json; from uploads.models import UploadSession as U; "
        "print(json.dumps(str(U.objects.order_by('-created_at')[0].pk)))"
    )
    payload = push.payload
    assert payload["url"] == f"/#/study/{upload_id}", payload
    assert payload["unread"] == 2, payload  # both studies' "received" notifications
    text = push.plaintext.decode()
    assert "SYNTHETIC" not in text and "SYN0001" not in text, text

    # Delivered to the service worker with no window of the app open: shown, and badged.
    cdp.send(
        "ServiceWorker.deliverPushMessage",
        {"origin": product.base, "registrationId": registration, "data": text},
    )
    shown = poll(lambda: worker.evaluate(WORKER_NOTIFICATIONS), lambda v: len(v) == 1)
    assert shown == [
        {
            "title": payload["title"],
            "body": payload["body"],
            "tag": payload["tag"],
            "url": payload["url"],
        }
    ], shown
    assert worker.evaluate("self.__badge") == [2]

    # The app opens again (the page sets the badge too once it knows the count); the
    # notification is clicked: the study's screen opens in that window.
    page = context.new_page()
    page.goto("/")
    expect(page.get_by_role("button", name="Upload study")).to_be_visible()
    expect(page.get_by_test_id("unread-count")).to_have_text("2")
    poll(lambda: page.evaluate("window.__badge"), lambda v: 2 in v)
    assert page.evaluate(PAGE_NOTIFICATIONS) == [{"title": payload["title"], "url": payload["url"]}]
    assert worker.evaluate(WORKER_CLICK) == payload["url"]
    expect(page).to_have_url(re.compile(re.escape(f"#/study/{upload_id}") + "$"))
    expect(page.get_by_role("heading", name="Study")).to_be_visible()
    expect(page.get_by_test_id("server-state")).to_have_text("Received by PACS")
    poll(lambda: page.evaluate(PAGE_NOTIFICATIONS), lambda v: v == [])  # the click closed it
    # ... and marked that notification read on the server (the other one stays unread).
    expect(page.get_by_test_id("unread-count")).to_have_text("1")
    clicked = product.shell_json(
        "import json; from notifications.models import Notification as N; "
        f"print(json.dumps(N.objects.get(pk={payload['notification_id']}).read_at is not None))"
    )
    assert clicked is True

    # All read: the page clears the badge.
    page.get_by_test_id("notifications-button").click()
    with page.expect_response(lambda r: r.url.endswith("/api/v1/notifications/read-all")):
        page.get_by_role("button", name="Mark all as read").click()
    poll(lambda: page.evaluate("window.__badge"), lambda v: v[-1:] == ["clear"])

    # A push while someone looks at the app: no notification (the page's toast tells), the
    # page is told and reloads its notifications.
    looking = "() => clients.matchAll({ type: 'window' }).then((l) => l.map((c) => [c.focused, c.visibilityState]))"
    assert worker.evaluate(looking) == [[True, "visible"]]
    with page.expect_response(lambda r: "/api/v1/notifications?" in r.url):
        cdp.send(
            "ServiceWorker.deliverPushMessage",
            {"origin": product.base, "registrationId": registration, "data": text},
        )
    assert worker.evaluate(WORKER_NOTIFICATIONS) == []
    context.close()


def test_settings_turn_push_on_and_off_say_when_it_is_blocked_and_sign_out_unsubscribes(
    product: Product, push_service: PushService, browser: Any, playwright_instance: Any
) -> None:
    context = new_context(browser, product, push_service, "settings")
    context.grant_permissions(["notifications"], origin=product.base)
    page = context.new_page()
    sign_in(page)
    worker_ready(page)
    page.get_by_role("button", name="Settings").click()
    group = page.get_by_test_id("group-device")
    state = group.get_by_test_id("push-state")
    expect(state).to_have_attribute("data-state", "off")
    expect(state).to_contain_text("Off: turn them on to be told when a study reaches the PACS")
    expect(group.get_by_test_id("app-version")).to_have_text(
        re.compile(r"^App version \d+\.\d+\.\d+\.$")
    )
    expect(group.get_by_test_id("storage-used")).to_contain_text("used of")

    group.get_by_role("button", name="Turn on notifications").click()
    expect(state).to_have_attribute("data-state", "on")
    assert [push_service.endpoint("settings"), "tech"] in subscriptions(product)
    screenshots(group, page, "pwa-settings-device")

    group.get_by_role("button", name="Turn off notifications").click()
    expect(state).to_have_attribute("data-state", "off")
    expect(group).to_contain_text("Notifications are off for this device.")
    assert [push_service.endpoint("settings"), "tech"] not in subscriptions(product)
    calls = page.evaluate("JSON.parse(localStorage.getItem('test-push-stub-calls'))")
    assert calls[-1] == "unsubscribe", calls

    # Signing out: this device's subscription goes first (server, then browser), then the session.
    group.get_by_role("button", name="Turn on notifications").click()
    expect(state).to_have_attribute("data-state", "on")
    # Before that: the browser replaces the subscription (Firefox's push service may ask
    # for it; Chromium never does, so the event is dispatched here): the worker sends the
    # new one for this device, which replaces the old one.
    renewed = push_service.subscription("renewed")
    the_worker(context).evaluate(SUBSCRIPTION_CHANGE, renewed)
    poll(
        lambda: subscriptions(product),
        lambda v: (
            [push_service.endpoint("renewed"), "tech"] in v
            and [push_service.endpoint("settings"), "tech"] not in v
        ),
    )
    order: list[str] = []

    def record(request: Any) -> None:
        if "/push-subscriptions" in request.url or request.url.endswith("/auth/logout"):
            order.append(f"{request.method} {urlsplit(request.url).path}")

    page.on("request", record)
    page.get_by_role("button", name="Back to studies").click()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Username")).to_be_visible()
    poll(lambda: order, lambda v: "POST /api/v1/auth/logout" in v)
    assert order == [
        "DELETE /api/v1/notifications/push-subscriptions",
        "POST /api/v1/auth/logout",
    ], order
    assert [push_service.endpoint("renewed"), "tech"] not in subscriptions(product)
    calls = page.evaluate("JSON.parse(localStorage.getItem('test-push-stub-calls'))")
    assert calls[-1] == "unsubscribe", calls

    # A push that still arrives with nobody signed in (a subscription the sign-out could not
    # remove, offline): shown, as the browser requires, but only as the app's name and a
    # line opening the app, whatever it carried; and the badge is cleared, not set.
    blank = context.new_page()
    cdp = context.new_cdp_session(blank)
    registration = registration_id(cdp, blank, f"{product.base}/")
    worker = the_worker(context)
    assert worker.evaluate(SPY_WORKER_BADGE) == "function"
    late = {"title": "Study received", "body": "CT chest reached the PACS.", "url": "/#/study/1"}
    cdp.send(
        "ServiceWorker.deliverPushMessage",
        {
            "origin": product.base,
            "registrationId": registration,
            "data": json.dumps({**late, "tag": "study-1", "unread": 3, "notification_id": 1}),
        },
    )
    shown = poll(lambda: worker.evaluate(WORKER_NOTIFICATIONS), lambda v: len(v) == 1)
    assert shown == [
        {
            "title": "RelayPACS",
            "body": "Open the app to see what is new.",
            "tag": "relaypacs-signed-out",
            "url": "/",
        }
    ], shown
    assert worker.evaluate("self.__badge") == ["clear"]
    blank.close()

    # Blocked in the browser: Settings says so, and how to allow it.
    target = context.new_cdp_session(page).send("Target.getTargetInfo")["targetInfo"]
    browser.new_browser_cdp_session().send(
        "Browser.setPermission",
        {
            "permission": {"name": "notifications"},
            "setting": "denied",
            "origin": product.base,
            "browserContextId": target["browserContextId"],
        },
    )
    sign_in(page)
    page.get_by_role("button", name="Settings").click()
    expect(state).to_have_attribute("data-state", "denied")
    expect(state).to_contain_text("The browser blocks notifications from RelayPACS. To allow them")
    expect(group.get_by_role("button", name="Turn on notifications")).to_have_count(0)
    context.close()


def test_not_now_is_remembered_and_clear_local_data_counts_every_accounts_unsent_studies_and_waits_for_the_uploader(
    product: Product, push_service: PushService, browser: Any, tmp_path: Path
) -> None:
    context = new_context(browser, product, push_service, "clear")
    page = context.new_page()
    sign_in(page)
    worker_ready(page)
    # The offer after the first study, answered "Not now": it does not come back.
    send_study(page, tmp_path / "sent" / "DICOM", "CT head")
    offer = page.get_by_test_id("push-offer")
    offer.get_by_role("button", name="Not now").click(timeout=RECEIPT_TIMEOUT_MS)
    expect(offer).to_have_count(0)
    expect(page.get_by_test_id("study-state")).to_have_text(
        "Received by PACS", timeout=RECEIPT_TIMEOUT_MS
    )
    page.reload()
    expect(page.get_by_test_id("study-state")).to_have_text("Received by PACS")
    expect(offer).to_have_count(0)
    page.get_by_role("button", name="Dismiss this study (the history keeps it)").click()

    # A study queued offline: not sent.
    context.set_offline(True)
    write_study(tmp_path / "CD" / "DICOM", instances=2, instance_bytes=40 * 1024)
    pick(page, "pick-folder", tmp_path / "CD" / "DICOM")
    expect(page.get_by_test_id("patient-name")).to_have_text("SYNTHETIC, PATIENT")
    page.get_by_role("button", name="Send to PACS").click()
    expect(page.get_by_test_id("study")).to_have_count(1)

    page.get_by_role("button", name="Settings").click()
    group = page.get_by_test_id("group-device")
    group.get_by_role("button", name="Clear local data").click()
    dialog = group.get_by_role("alertdialog", name="Clear local data")
    expect(dialog).to_contain_text("Clearing deletes everything this app keeps on this device")
    dialog.get_by_role("button", name="Clear and sign out").click()
    refusal = group.get_by_role("alertdialog", name="Not sent yet")
    expect(refusal).to_contain_text(
        "1 study is not yet received by the PACS: clearing deletes it from this device, and it is not sent."
    )
    screenshots(group, page, "pwa-settings-clear")
    refusal.get_by_role("button", name="Keep it and do not clear").click()
    expect(refusal).to_have_count(0)
    page.get_by_role("button", name="Back to studies").click()
    expect(page.get_by_test_id("study")).to_have_count(1)

    # Another account's study left unsent on the same device: counted too, since clearing
    # deletes it as well (it is not on this account's list).
    page.evaluate(ANOTHER_ACCOUNTS_STUDY)
    page.get_by_role("button", name="Settings").click()
    group.get_by_role("button", name="Clear local data").click()
    dialog.get_by_role("button", name="Clear and sign out").click()
    expect(refusal).to_contain_text(
        "2 studies are not yet received by the PACS, 1 of them from another account: clearing"
        " deletes them from this device, and they are not sent."
    )

    # An uploader elsewhere (the service worker's Background Sync, another tab) holds the
    # queue: clearing waits 5 s for it, then refuses and clears nothing.
    page.evaluate(HOLD_UPLOADER_LOCK)
    refusal.get_by_role("button", name="Delete them and clear").click()
    expect(group).to_contain_text(
        "The app is still sending a study in the background.", timeout=UPLOADER_STOP_MS + 10_000
    )
    expect(group).to_contain_text("Wait a moment and press Clear local data again.")
    expect(page.get_by_label("Username")).to_have_count(0)
    states = sorted(
        (row["owner"], row["state"])
        for row in map(json.loads, page.evaluate(DUMP_INDEXEDDB)["relaypacs"]["studies"])
    )
    # The sent study's history line, and both unsent studies as they were (not cancelled).
    assert states == [("nurse", "queued"), ("tech", "completed"), ("tech", "queued")], states
    page.evaluate("window.__releaseUploaderLock()")

    group.get_by_role("button", name="Clear local data").click()
    dialog.get_by_role("button", name="Clear and sign out").click()
    refusal.get_by_role("button", name="Delete them and clear").click()
    expect(page.get_by_label("Username")).to_be_visible()
    dump = page.evaluate(DUMP_INDEXEDDB)
    left = {table: rows for table, rows in dump["relaypacs"].items() if rows}
    assert left == {}, left
    kept = page.evaluate("Object.keys(localStorage).filter((k) => k.startsWith('relaypacs-'))")
    assert kept == [], kept
    # Back at the start, and it stays so after a reload.
    page.reload()
    expect(page.get_by_label("Username")).to_be_visible()
    context.set_offline(False)
    context.close()
