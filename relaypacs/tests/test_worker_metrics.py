"""A Celery worker started on its own (its own container) serves its processes' counters
on METRICS_WORKER_PORT, summed over its pool processes, to a scraper with METRICS_TOKEN
and to its own health check on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from uploads.management.commands.serve import _lan_addresses
from uploads.tests.helpers import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TOKEN = "a-long-worker-scrape-token"


def test_a_worker_on_its_own_serves_its_counters(tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "relaypacs.settings.test",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "METRICS_WORKER_PORT": str(port),
        "METRICS_REQUIRE_AUTH": "true",
        "METRICS_TOKEN": TOKEN,
        "DATA_DIR": str(tmp_path / "data"),
    }
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "relaypacs",
                "worker",
                "--concurrency=2",
                "--loglevel=INFO",
                f"--hostname=metrics-test-{port}@%h",
                "--queues=metrics-test-none",
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert worker.poll() is None, log.read_text()
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                if answer.status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        assert "relaypacs_upload_pacs_retries_total" in answer.text
        assert "relaypacs_bytes_received_total" in answer.text
        # Over the network (this machine's own address: not loopback) the token is asked.
        lan = _lan_addresses()
        assert lan, "this test needs a non-loopback address (hostname -I)"
        remote = f"http://{lan[0]}:{port}/metrics"
        refused = requests.get(remote, timeout=5)
        assert refused.status_code == 401, refused.text
        assert "METRICS_TOKEN" in refused.text
        wrong = requests.get(remote, headers={"Authorization": "Bearer wrong"}, timeout=5)
        assert wrong.status_code == 401
        scraped = requests.get(remote, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
        assert scraped.status_code == 200
        assert "relaypacs_bytes_received_total" in scraped.text
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
