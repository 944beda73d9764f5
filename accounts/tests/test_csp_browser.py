"""The PWA works in Chromium under the production Content Security Policy.

Chromium loads the built app from frontend/dist and calls the real API (Django's test
client, in this process); every response carries the production policy. Signing in must
work with no policy violation, and an inline script must be blocked (the policy is live).
"""

from __future__ import annotations

import mimetypes
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.test import Client

from accounts.tests.factories import UserFactory
from accounts.tests.helpers import PASSWORD
from relaypacs.settings.csp import PWA_CSP_DIRECTIVES, csp_header_value

# Playwright calls the route handler in its own greenlet, which Django gives its own
# database connection: the data must be committed to be seen there, and is flushed after.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

FRONTEND = Path(__file__).resolve().parents[2] / "frontend"
CHROMIUM = "/usr/bin/chromium"
# localhost is a secure context (the PWA needs Web Locks), though nothing listens there:
# every request is answered by the route below.
ORIGIN = "http://localhost:9"
# Plain HTTP in this test: upgrading sub-resources to HTTPS would only break the loading.
POLICY = csp_header_value(
    {k: v for k, v in PWA_CSP_DIRECTIVES.items() if k != "upgrade-insecure-requests"}
)
NPM_TIMEOUT_SECONDS = 600


def _dist() -> Path:
    """frontend/dist, built when it is missing or older than the sources (a fresh clone)."""
    index = FRONTEND / "dist" / "index.html"
    sources = [p for p in FRONTEND.glob("src/**/*") if p.is_file()] + [FRONTEND / "index.html"]
    if index.is_file() and index.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
        return index.parent
    npm = shutil.which("npm")
    assert npm, "npm is needed to build the app (scripts/bootstrap.sh installs Node)"
    if not (FRONTEND / "node_modules").is_dir():
        subprocess.run([npm, "ci"], cwd=FRONTEND, check=True, timeout=NPM_TIMEOUT_SECONDS)
    subprocess.run([npm, "run", "build"], cwd=FRONTEND, check=True, timeout=NPM_TIMEOUT_SECONDS)
    return index.parent


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test client's database
    # calls from its route handler are still plain synchronous calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        context = browser.new_context(base_url=ORIGIN, service_workers="block")
        page = context.new_page()
        page.add_init_script(
            "window.__violations = [];"
            "document.addEventListener('securitypolicyviolation',"
            " e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
        )
        try:
            yield page
        finally:
            browser.close()


def _serve(dist: Path, api: Client) -> Any:
    def handle(route: Any) -> None:
        request = route.request
        url = urlsplit(request.url)
        path = url.path
        if path.startswith("/api/"):
            headers = {
                f"HTTP_{k.upper().replace('-', '_')}": v
                for k, v in request.headers.items()
                if k.lower() not in ("content-type", "content-length")
            }
            response = api.generic(
                request.method,
                f"{path}?{url.query}" if url.query else path,
                data=request.post_data_buffer or b"",
                content_type=request.headers.get("content-type", "application/octet-stream"),
                **headers,
            )
            body = b"".join(response.streaming_content) if response.streaming else response.content
            route.fulfill(
                status=response.status_code,
                headers={**dict(response.items()), "Content-Security-Policy": POLICY},
                body=body,
            )
            return
        file = dist / path.lstrip("/")
        if not file.is_file():
            file = dist / "index.html"  # the app's own routes
        content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if file.suffix == ".webmanifest":
            content_type = "application/manifest+json"
        route.fulfill(
            status=200,
            headers={"Content-Type": content_type, "Content-Security-Policy": POLICY},
            body=file.read_bytes(),
        )

    return handle


def test_the_pwa_signs_in_under_the_production_policy(page):
    from playwright.sync_api import expect

    user = UserFactory()
    page.route(f"{ORIGIN}/**", _serve(_dist(), Client()))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto("/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Upload study")).to_be_visible()
    assert errors == []
    assert page.evaluate("window.__violations") == []
    # The policy is enforced: an inline script is refused.
    page.evaluate(
        "() => { const s = document.createElement('script');"
        " s.textContent = 'window.__inline = 1'; document.body.appendChild(s); }"
    )
    page.wait_for_function("window.__violations.length > 0")
    assert page.evaluate("window.__inline") is None
