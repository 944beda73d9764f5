"""The PWA in Debian's Chromium (Playwright) against the product as `make run` starts it:
`manage.py serve` (uvicorn, a real Celery worker and beat) on a fresh SQLite file, with the
session's test Orthanc as the PACS."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pwa_helpers import PASSWORD, USERNAME, CuttableLink, Product

REPO = Path(__file__).resolve().parents[2]
FRONTEND = REPO / "frontend"
CHROMIUM = "/usr/bin/chromium"
# Migrations on a new SQLite file plus four processes starting: seconds, not minutes.
START_TIMEOUT = 90


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
    _build_frontend()
    return FRONTEND / "dist"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def product(tmp_path: Path, orthanc: Any, frontend_dist: Path) -> Iterator[Product]:
    port = _free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
    }
    user, password = orthanc.auth
    env.update(
        DATA_DIR=str(tmp_path / "data"),
        PORT=str(port),
        HOST="127.0.0.1",
        PACS_DICOMWEB_URL=orthanc.dicomweb_url,
        PACS_ORTHANC_URL=orthanc.url,
        PACS_USERNAME=user,
        PACS_PASSWORD=password,
        REDISPATCH_INTERVAL_SECONDS="2",
        UPLOAD_LEASE_SECONDS="5",
        WEB_WORKERS="1",
    )
    log_path = tmp_path / "serve.log"
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            try:
                if requests.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError(log_path.read_text())
        product = Product(base, env, process, log_path)
        product.manage(
            "createsuperuser",
            "--noinput",
            extra_env={
                "DJANGO_SUPERUSER_USERNAME": USERNAME,
                "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
                "DJANGO_SUPERUSER_EMAIL": "tech@example.org",
            },
        )
        yield product
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


@pytest.fixture(scope="session")
def playwright_instance() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture
def browser(playwright_instance: Any) -> Iterator[Any]:
    browser = playwright_instance.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
    )
    try:
        yield browser
    finally:
        browser.close()


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
