"""The PWA in Debian's Chromium (Playwright) against the product as `make run` starts it:
`manage.py serve` (uvicorn, a real Celery worker and beat) on a fresh SQLite file, with the
session's test Orthanc as the PACS."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pwa_helpers import CuttableLink, Product, product_with_technician

REPO = Path(__file__).resolve().parents[2]
FRONTEND = REPO / "frontend"
CHROMIUM = "/usr/bin/chromium"


def _build_frontend() -> None:
    """Build frontend/dist when it is missing or older than the sources (a fresh clone)."""
    dist = FRONTEND / "dist" / "index.html"
    sources = [
        p
        for p in [*FRONTEND.glob("src/**/*"), FRONTEND / "index.html", FRONTEND / "vite.config.ts"]
        if p.is_file()
    ]
    newest = max(p.stat().st_mtime for p in sources)
    if dist.is_file() and dist.stat().st_mtime >= newest:
        return
    npm = shutil.which("npm")
    assert npm, "npm is needed to build the app (scripts/bootstrap.sh installs Node)"
    if not (FRONTEND / "node_modules").is_dir():
        subprocess.run([npm, "ci"], cwd=FRONTEND, check=True, capture_output=True, timeout=600)
    built = subprocess.run(
        [npm, "run", "build"], cwd=FRONTEND, capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stdout + built.stderr


@pytest.fixture(scope="session")
def frontend_dist() -> Path:
    # pytest-xdist processes each run this fixture: one builds, the others wait for it
    # and then find the build up to date (two builds at once would write one dist/).
    lock_path = Path(tempfile.gettempdir()) / f"relaypacs-frontend-build-{os.getuid()}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _build_frontend()
    return FRONTEND / "dist"


@pytest.fixture
def product(tmp_path: Path, orthanc: Any, frontend_dist: Path) -> Iterator[Product]:
    with product_with_technician(tmp_path, orthanc) as product:
        yield product


# Per module, not per session: while Playwright's sync API runs, its event loop counts as
# running in this thread, so Django refuses database calls (SynchronousOnlyOperation) and
# another sync_playwright() refuses to start. pytest-django runs the browser tests (no
# database) last, but with pytest-xdist a process goes on to other modules after these.
@pytest.fixture(scope="module")
def playwright_instance() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright


# One Chromium per module (each test opens its own contexts, which share nothing): a
# launch per test cost about 1 s of the two cores each time.
@pytest.fixture(scope="module")
def browser(playwright_instance: Any) -> Iterator[Any]:
    browser = playwright_instance.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
    )
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(autouse=True)
def _contexts_closed_after_each_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every browser context a test left open (one that failed before its own close) is
    closed when the test ends, as the per-test browser did: its service worker must not go
    on uploading into the module's product during the next test."""
    yield
    if "browser" in request.fixturenames:
        for context in list(request.getfixturevalue("browser").contexts):
            context.close()


@pytest.fixture
def phone(browser: Any, product: Product) -> Iterator[Any]:
    """A browser context sized like a phone (360×640), on the product's origin."""
    context = browser.new_context(
        base_url=product.base,
        viewport={"width": 360, "height": 640},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    try:
        yield context
    finally:
        context.close()


@pytest.fixture
def link(product: Product) -> Iterator[CuttableLink]:
    relay = CuttableLink(int(product.base.rsplit(":", 1)[1]))
    try:
        yield relay
    finally:
        relay.close()
