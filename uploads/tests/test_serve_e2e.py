"""The product exactly as `make run` starts it (SQLite, embedded broker), over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from uploads.tests.helpers import (
    HttpUploader,
    free_port,
    sample_paths,
    sop_uid,
)
from uploads.tests.synthetic import write_study

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
# Migrations on a new SQLite file plus four processes starting: seconds, not minutes.
START_TIMEOUT = 90
CHUNK = 1024 * 1024


def product_env(data_dir: Path, port: int, orthanc) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
    }
    user, password = orthanc.auth
    env.update(
        DATA_DIR=str(data_dir),
        PORT=str(port),
        PACS_DICOMWEB_URL=orthanc.dicomweb_url,
        PACS_ORTHANC_URL=orthanc.url,
        PACS_USERNAME=user,
        PACS_PASSWORD=password,
        REDISPATCH_INTERVAL_SECONDS="2",
        UPLOAD_LEASE_SECONDS="5",
        PACS_STOW_BATCH_BYTES=str(4 * 1024 * 1024),
        WEB_WORKERS="1",
        HOST="127.0.0.1",
        HTTPS_PORT=str(free_port()),
    )
    return env


@pytest.fixture
def product(tmp_path, orthanc):
    port = free_port()
    env = product_env(tmp_path / "data", port, orthanc)
    log = open(tmp_path / "serve.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            if requests.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.3)
    else:
        raise AssertionError((tmp_path / "serve.log").read_text())
    yield {"base": base, "env": env, "process": process, "log": tmp_path / "serve.log"}
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def sign_in(base: str, env: dict[str, str]) -> str:
    subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=60,
        env={
            **env,
            "DJANGO_SUPERUSER_USERNAME": "admin",
            "DJANGO_SUPERUSER_PASSWORD": "a long admin password",
            "DJANGO_SUPERUSER_EMAIL": "admin@example.org",
        },
    )
    login = requests.post(
        f"{base}/api/v1/auth/login",
        json={"username": "admin", "password": "a long admin password"},
        timeout=10,
    )
    assert login.status_code == 200, login.text
    return login.json()["access"]


def test_make_run_product_uploads_into_the_pacs_and_stops_cleanly(product, orthanc_clean):
    base, env, process = product["base"], product["env"], product["process"]
    health = requests.get(f"{base}/api/v1/health", timeout=10).json()
    assert health["status"] == "ok", health
    assert health["checks"]["database"]["detail"] == "sqlite"
    assert health["checks"]["broker"]["detail"] == "embedded"
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
    access = sign_in(base, env)
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
    access = sign_in(base, env)
    client = HttpUploader(base, access, CHUNK)
    paths = write_study(tmp_path / "study", instances=40, instance_bytes=3 * 1024 * 1024)
    upload = client.init(paths)
    client.send(upload, paths)
    client.complete(upload)

    worker = next(
        p
        for p in psutil.Process(process.pid).children()
        if "worker" in p.cmdline() and "celery" in " ".join(p.cmdline())
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
