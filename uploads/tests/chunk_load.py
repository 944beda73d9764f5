"""A web process alone (uvicorn, as ``manage.py serve`` starts it) and a burst of concurrent
chunk PUTs against it, with the process's peak RSS: for the chunk-memory tests
(``test_chunk_memory_e2e.py``) and for measuring a change against a copy of the old code
(``code``: the source tree the web process runs from).

The web process runs on the embedded default's SQLite under ``work`` (or on PostgreSQL:
``database_url``), migrated here, with local upload storage under ``work``; no Celery
worker: storing chunks needs none.
"""

from __future__ import annotations

import hashlib
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from uploads.tests.helpers import content_md5, free_port

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "a long chunk-memory password"  # throwaway local accounts
# Migrations on an empty PostgreSQL database and Django's start: seconds here; a loaded
# 2-core machine has needed ten times that.
START_TIMEOUT = 120
USERS_SCRIPT = """
from accounts.models import Facility, Role, User
facility, _ = Facility.objects.get_or_create(code="mem", defaults={{"name": "Memory clinic"}})
for number in range({count}):
    name = f"memory{{number:02d}}"
    if not User.objects.filter(username=name).exists():
        User.objects.create_user(
            username=name, password={password!r}, role=Role.RADIOGRAPHER, facility=facility,
            email=f"{{name}}@example.org",
        )
"""


@dataclass
class WebProcess:
    base: str
    pid: int
    env: dict[str, str]
    log: Path

    def status(self, field_name: str) -> int:
        """A ``/proc/<pid>/status`` size in bytes (``VmRSS``, ``VmHWM``)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"{field_name} not in /proc/{self.pid}/status")

    def reset_peak(self) -> None:
        """Start ``VmHWM`` again from the current RSS (``clear_refs``, value 5)."""
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")


def _manage(env: dict[str, str], code: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@contextmanager
def web_process(
    work: Path,
    *,
    database_url: str | None = None,
    code: Path = REPO,
    users: int = 1,
    **overrides: str,
) -> Iterator[WebProcess]:
    """One uvicorn web process of the product (flags as ``manage.py serve`` gives them),
    with ``users`` radiographers ``memory00``...; killed afterwards."""
    # Not inherited: the test session's own database, broker and storage folders.
    foreign = {
        "DJANGO_SETTINGS_MODULE",
        "REPORT_STORAGE_DIR",
        "UPLOAD_STORAGE_DIR",
        "DATABASE_URL",
        "CELERY_BROKER_URL",
        "REDIS_URL",
    }
    env = {k: v for k, v in os.environ.items() if k not in foreign}
    env.update(
        DJANGO_SETTINGS_MODULE="relaypacs.settings.dev",
        DATA_DIR=str(work / "data"),
        PYTHONUNBUFFERED="1",
        **overrides,
    )
    if database_url:
        env["DATABASE_URL"] = database_url
    _manage(env, code, "migrate", "--noinput")
    _manage(env, code, "shell", "-c", USERS_SCRIPT.format(count=users, password=PASSWORD))
    port = free_port()
    log = work / "web.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "relaypacs.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",  # the server runs in this very process: its RSS is the web process's
                "--no-access-log",
                "--timeout-keep-alive",
                "5",
            ],
            cwd=code,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if requests.get(f"{base}/api/v1/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield WebProcess(base=base, pid=process.pid, env=env, log=log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def sign_in(web: WebProcess, number: int = 0) -> str:
    """The access token of radiographer ``memory<number>``."""
    response = requests.post(
        f"{web.base}/api/v1/auth/login",
        json={"username": f"memory{number:02d}", "password": PASSWORD},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["access"])


def upload_init(web: WebProcess, access: str, *, size: int, chunk_size: int) -> dict[str, Any]:
    """A new upload of one file of ``size`` bytes; the init answer (id, upload token)."""
    response = requests.post(
        f"{web.base}/api/v1/upload/init",
        json={"files": [{"name": "series.bin", "size": size}], "chunk_size": chunk_size},
        headers={"Authorization": f"Bearer {access}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


@dataclass
class Sent:
    """What one chunk PUT got: its status, error code, seconds until the answer."""

    status: int
    code: str
    seconds: float


@dataclass
class Burst:
    sent: list[Sent] = field(default_factory=list)
    seconds: float = 0.0
    bytes_sent: int = 0

    @property
    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for one in self.sent:
            counts[one.status] = counts.get(one.status, 0) + 1
        return counts

    def latency(self, fraction: float) -> float:
        values = sorted(one.seconds for one in self.sent)
        return values[min(len(values) - 1, int(fraction * len(values)))]

    @property
    def median(self) -> float:
        return statistics.median(one.seconds for one in self.sent)


def put_chunk(
    web: WebProcess, upload: dict[str, Any], index: int, data: bytes, *, token: str = ""
) -> Sent:
    began = time.monotonic()
    response = requests.put(
        f"{web.base}/api/v1/upload/{upload['upload_id']}/chunk?index={index}",
        data=data,
        headers={
            "Authorization": f"Bearer {token or upload['upload_token']}",
            "Content-MD5": content_md5(data),
            "Content-Type": "application/octet-stream",
        },
        timeout=120,
    )
    code = ""
    if response.status_code != 200:
        code = str(response.json().get("error", {}).get("code", ""))
    return Sent(response.status_code, code, time.monotonic() - began)


def burst(
    web: WebProcess,
    work: list[tuple[dict[str, Any], int, bytes]],
    *,
    concurrency: int,
    token_of: Any = None,
) -> Burst:
    """Send every ``(upload, index, data)`` of ``work``, ``concurrency`` at a time, all
    released at once."""
    result = Burst(bytes_sent=sum(len(data) for _, _, data in work))
    start = threading.Barrier(min(concurrency, len(work)))

    def one(item: tuple[dict[str, Any], int, bytes], first: bool) -> Sent:
        if first:
            start.wait(timeout=60)
        upload, index, data = item
        token = token_of(upload) if token_of is not None else ""
        return put_chunk(web, upload, index, data, token=token)

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(one, item, n < concurrency) for n, item in enumerate(work)]
        result.sent = [future.result() for future in futures]
    result.seconds = time.monotonic() - began
    return result


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()
