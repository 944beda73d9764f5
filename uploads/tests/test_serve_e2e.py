"""The product exactly as `make run` starts it (SQLite, embedded broker), over HTTP."""

from __future__ import annotations

import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import django
import psutil
import pytest
import requests

from uploads.tests.helpers import (
    HttpUploader,
    free_port,
    sample_paths,
    sop_uid,
)
from uploads.tests.product import START_TIMEOUT, admin_access_token, manage, running_product
from uploads.tests.synthetic import write_study

pytestmark = pytest.mark.e2e

CHUNK = 1024 * 1024


@contextmanager
def _started(tmp_path: Path, orthanc: Any, *, fresh: bool) -> Iterator[dict[str, Any]]:
    started = datetime.now(UTC)
    with running_product(
        tmp_path,
        orthanc,
        fresh=fresh,
        PACS_STOW_BATCH_BYTES=str(4 * 1024 * 1024),
        HTTPS_PORT=str(free_port()),
    ) as running:
        yield {
            "base": running.base,
            "env": running.env,
            "process": running.process,
            "log": running.log,
            "started": started,
            "running": running,
        }


@pytest.fixture
def product(tmp_path, orthanc):
    """Started on the tests' migrated database and shared static files (see product.py)."""
    with _started(tmp_path, orthanc, fresh=False) as running:
        yield running


@pytest.fixture
def fresh_product(tmp_path, orthanc):
    """Started as `make run` on a new machine: it migrates and collects itself."""
    with _started(tmp_path, orthanc, fresh=True) as running:
        yield running


def test_make_run_product_uploads_into_the_pacs_and_stops_cleanly(fresh_product, orthanc_clean):
    product = fresh_product
    base, env, process = product["base"], product["env"], product["process"]
    data_dir = Path(env["DATA_DIR"])
    # It made its own database: every migration applied, each after the start (a copied
    # database would hold the times they were applied to the tests' template).
    assert "DATABASE_URL" not in env
    manage(product["running"], "migrate", "--check")
    with closing(sqlite3.connect(data_dir / "relaypacs.sqlite3")) as database:
        applied = [
            datetime.fromisoformat(row[0]).replace(tzinfo=UTC)
            for row in database.execute("SELECT applied FROM django_migrations")
        ]
    assert applied and min(applied) >= product["started"], (min(applied), product["started"])
    # And collected the static files into DATA_DIR/staticfiles, which it serves.
    assert "STATIC_ROOT" not in env
    assert (data_dir / "staticfiles" / ".relaypacs-collected").exists()
    admin_css = requests.get(f"{base}/static/admin/css/base.css", timeout=10)
    assert admin_css.status_code == 200
    source = Path(django.__file__).parent / "contrib/admin/static/admin/css/base.css"
    assert admin_css.content == source.read_bytes()

    health = requests.get(f"{base}/api/v1/health", timeout=10).json()
    assert health == {"status": "ok"}, health  # each part's state is for administrators
    # HTTPS on the LAN with the generated certificate, which names this host's addresses.
    cert = Path(env["DATA_DIR"]) / "tls" / "relaypacs-lan.crt"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            secure = requests.get(
                f"https://127.0.0.1:{env['HTTPS_PORT']}/api/v1/health", verify=cert, timeout=10
            )
            break
        except requests.exceptions.ConnectionError:
            assert time.monotonic() < deadline, "HTTPS did not come up"
            time.sleep(0.3)
    assert secure.status_code == 200

    # manage.py run with the same environment reaches the same database.
    access = admin_access_token(base, env)
    detailed = requests.get(
        f"{base}/api/v1/health", headers={"Authorization": f"Bearer {access}"}, timeout=10
    ).json()
    assert detailed["checks"]["database"]["detail"] == "sqlite"
    assert detailed["checks"]["broker"]["detail"] == "embedded"
    client = HttpUploader(base, access, CHUNK)
    paths = sample_paths()
    upload = client.init(paths)
    client.send(upload, paths)
    client.complete(upload)
    status = client.wait(upload, {"completed", "failed"})
    assert status["state"] == "completed", status
    for path in paths:
        assert orthanc_clean.instance_file(sop_uid(path)) == path.read_bytes()

    children = psutil.Process(process.pid).children(recursive=True)
    assert len(children) >= 3  # web, worker, beat (and their own workers)
    process.send_signal(signal.SIGINT)  # Ctrl-C
    assert process.wait(timeout=60) == 0
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"left running: {[p.pid for p in alive]}"


def test_sigkilled_worker_on_the_embedded_broker_loses_nothing(product, orthanc_clean, tmp_path):
    base, env, process = product["base"], product["env"], product["process"]
    access = admin_access_token(base, env)
    client = HttpUploader(base, access, CHUNK)
    paths = write_study(tmp_path / "study", instances=40, instance_bytes=3 * 1024 * 1024)
    upload = client.init(paths)
    client.send(upload, paths)
    client.complete(upload)

    worker = next(
        p
        for p in psutil.Process(process.pid).children()
        # The main worker, not the backup worker serve also starts.
        if any(arg.startswith("--hostname=worker@") for arg in p.cmdline())
    )
    deadline = time.monotonic() + 60
    killed = False
    while time.monotonic() < deadline and not killed:
        status = client.status(upload)
        if status["state"] == "forwarding" and status["pacs"]["acknowledged_instances"] >= 1:
            pool = worker.children()
            worker.kill()  # SIGKILL the worker and its pool at once, as a crash would
            for child in pool:
                child.kill()
            killed = True
        time.sleep(0.02)
    assert killed and status["pacs"]["acknowledged_instances"] < len(paths), status

    status = client.wait(upload, {"completed", "failed"}, timeout=120)
    assert status["state"] == "completed", status
    assert process.poll() is None  # serve restarted the worker instead of stopping
    held = orthanc_clean.sop_instance_uids()
    assert {sop_uid(p) for p in paths} == held  # every instance, each held once
