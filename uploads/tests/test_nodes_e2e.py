"""Two nodes that share nothing but PostgreSQL, Redis and the S3 bucket.

Each node is `manage.py serve` (uvicorn web workers, a Celery worker, Celery beat) with a
DATA_DIR of its own, in S3 mode. The chunks of one upload go to either node at random;
one node is killed with SIGKILL (its whole process group) mid-upload and started again.
The upload reaches the real Orthanc byte-identical, no request is answered 5xx (a request
the killed node cannot answer is sent again to the other, as a load balancer would), and
neither node's DATA_DIR holds any of its bytes afterwards.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from django.conf import settings

from relaypacs.tests.databases import fresh_database
from uploads.tests.helpers import content_md5, iter_file_chunks, manifest, sop_uid
from uploads.tests.product import REPO, START_TIMEOUT, product_env
from uploads.tests.synthetic import write_study

pytestmark = pytest.mark.e2e

CHUNK = 256 * 1024  # the smallest chunk: many requests, so the kill lands mid-upload
SENDERS = 3
# Attempts per request: each goes to a node picked at random; a connection error (a
# killed node, one still starting) is sent again, as a load balancer retries another node.
ATTEMPTS = 40
RETRY_PAUSE = 0.25
FINAL = {"completed", "failed", "cancelled", "needs_confirmation"}
PASSWORD = "a long admin password"
# How long a web process trusts an upload token it verified (the default is 10 s).
RECHECK_SECONDS = 3


@dataclass
class Node:
    name: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.env['PORT']}"

    @property
    def data_dir(self) -> Path:
        return Path(self.env["DATA_DIR"])

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "serve"],
            cwd=REPO,
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: web, worker and beat with it
        )
        out.close()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.tail()
            try:
                if requests.get(f"{self.base}/api/v1/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{self.name} did not come up:\n{self.tail()}")

    def kill9(self) -> None:
        """SIGKILL serve and every process it started, at once, as a power cut would."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass
class Cluster:
    nodes: list[Node]
    statuses: list[tuple[str, str, int]] = field(default_factory=list)
    connection_errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """``method path`` on a node picked at random; on a connection error, again."""
        last: Exception | None = None
        for _ in range(ATTEMPTS):
            node = random.choice(self.nodes)  # noqa: S311
            try:
                response = requests.request(method, node.base + path, timeout=60, **kwargs)
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                # Refused, or cut mid-answer by the SIGKILL: the PWA sends the chunk again.
                last = exc
                with self.lock:
                    self.connection_errors += 1
                time.sleep(RETRY_PAUSE)
                continue
            with self.lock:
                self.statuses.append((node.name, f"{method} {path}", response.status_code))
            return response
        raise AssertionError(f"no node answered {method} {path}: {last}")


@pytest.fixture
def nodes(tmp_path, orthanc, s3_server, django_db_setup) -> Iterator[Cluster]:
    queue = f"test-nodes-{uuid.uuid4().hex}"
    broker = settings.CELERY_BROKER_URL
    with fresh_database("nodes") as database_url:
        shared = {
            # One key for every node: tokens signed by one are checked by the other (a
            # node left to itself generates a key of its own in its DATA_DIR).
            "SECRET_KEY": f"nodes-test-{uuid.uuid4().hex}",
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": broker,
            "REDIS_URL": broker,
            # Its own queue: the test session's worker on this Redis never takes its tasks.
            "CELERY_QUEUE": queue,
            "PACS_STOW_BATCH_BYTES": str(4 * 1024 * 1024),
            "UPLOAD_TOKEN_RECHECK_SECONDS": str(RECHECK_SECONDS),
            **s3_server.env(),
        }
        cluster = Cluster(
            [
                Node(
                    name,
                    product_env(tmp_path / name / "data", orthanc, **shared),
                    tmp_path / f"{name}.log",
                )
                for name in ("node-a", "node-b")
            ]
        )
        try:
            # Together, on the new database: serve's locked migrate lets one migrate while
            # the other waits, then finds nothing left to do.
            for node in cluster.nodes:
                node.data_dir.mkdir(parents=True)
                node.start()
            for node in cluster.nodes:
                node.wait_healthy()
            yield cluster
        finally:
            for node in cluster.nodes:
                if node.process is not None and node.process.poll() is None:
                    node.kill9()
            client = redis.Redis.from_url(broker)
            for key in client.keys(f"*{queue}*"):
                client.delete(key)
            client.close()


def _sign_in(cluster: Cluster) -> dict[str, str]:
    subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput"],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
        env={
            **cluster.nodes[0].env,
            "DJANGO_SUPERUSER_USERNAME": "admin",
            "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
            "DJANGO_SUPERUSER_EMAIL": "admin@example.org",
        },
    )
    login = cluster.request(
        "POST", "/api/v1/auth/login", json={"username": "admin", "password": PASSWORD}
    )
    assert login.status_code == 200, login.text
    tokens: dict[str, str] = login.json()
    return tokens


def _samples(paths: list[Path]) -> list[bytes]:
    """Pieces of the study's random pixel data: any copy of its bytes contains them."""
    found = []
    for path in paths:
        data = path.read_bytes()
        for fraction in (0.4, 0.6, 0.9):
            start = int(len(data) * fraction)
            found.append(data[start : start + 48])
    return found


def _files_holding(directory: Path, samples: list[bytes], upload_id: str) -> list[str]:
    """Files under ``directory`` named after the upload or holding any of its bytes."""
    holding = []
    for path in directory.rglob("*"):
        if upload_id in str(path):
            holding.append(str(path))
            continue
        if not path.is_file() or path.is_symlink():
            continue
        try:
            content = path.read_bytes()
        except OSError:
            continue
        if any(sample in content for sample in samples):
            holding.append(str(path))
    return holding


def test_an_upload_sent_to_two_nodes_survives_one_killed_and_leaves_no_bytes_on_them(
    nodes, orthanc_clean, s3_server, tmp_path
):
    cluster = nodes
    first, second = cluster.nodes
    tokens = _sign_in(cluster)
    access = tokens["access"]
    paths = write_study(tmp_path / "study", instances=8, instance_bytes=1024 * 1024)
    init = cluster.request(
        "POST",
        "/api/v1/upload/init",
        json=manifest(paths, chunk_size=CHUNK),
        headers={"Authorization": f"Bearer {access}"},
    )
    assert init.status_code == 201, init.text
    upload_id = init.json()["upload_id"]
    headers = {"Authorization": f"Bearer {init.json()['upload_token']}"}
    chunks = list(iter_file_chunks(paths, CHUNK))
    random.shuffle(chunks)
    acknowledged: list[int] = []

    def put(chunk: tuple[int, bytes]) -> None:
        index, data = chunk
        response = cluster.request(
            "PUT",
            f"/api/v1/upload/{upload_id}/chunk?index={index}",
            data=data,
            headers={
                **headers,
                "Content-MD5": content_md5(data),
                "Content-Type": "application/octet-stream",
            },
        )
        assert response.status_code == 200, response.text
        with cluster.lock:
            acknowledged.append(index)

    third = len(chunks) // 3
    with ThreadPoolExecutor(max_workers=SENDERS) as pool:
        sending = [pool.submit(put, chunk) for chunk in chunks[: 2 * third]]
        # SIGKILL one node while chunks are in flight to both.
        deadline = time.monotonic() + 120
        while len(acknowledged) < third // 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(acknowledged) < 2 * third, "the upload was over before the kill"
        first.kill9()
        killed_at = len(acknowledged)
        logs_at_kill = {node.name: node.log.stat().st_size for node in cluster.nodes}
        # Started again at once; until it answers, its requests go to the other node.
        first.start()
        for future in sending:
            future.result()
        first.wait_healthy()
        restarted = len(cluster.statuses)
        for future in [pool.submit(put, chunk) for chunk in chunks[2 * third :]]:
            future.result()
    assert 0 < killed_at < len(chunks)
    assert cluster.connection_errors > 0  # the killed node's requests were sent again
    served = {name for name, what, _ in cluster.statuses[restarted:] if "/chunk" in what}
    assert served == {"node-a", "node-b"}, served  # the restarted node takes chunks again

    complete = cluster.request("POST", f"/api/v1/upload/{upload_id}/complete", headers=headers)
    assert complete.status_code == 202, complete.text
    deadline = time.monotonic() + 240
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = cluster.request(
            "GET", f"/api/v1/upload/{upload_id}/status", headers=headers
        ).json()
        if status["state"] in FINAL:
            break
        time.sleep(0.5)
    assert status["state"] == "completed", (status, first.tail(), second.tail())

    for path in paths:
        assert orthanc_clean.instance_file(sop_uid(path)) == path.read_bytes(), path.name
    # Both nodes run a beat; one holds the lock at a time. Killed with it, the first node
    # hands it to the other; started again, it waits on standby.
    took, standby = b"beat took the lock", b"beat is on standby"
    before = {n.name: n.log.read_bytes()[: logs_at_kill[n.name]] for n in cluster.nodes}
    after = {n.name: n.log.read_bytes()[logs_at_kill[n.name] :] for n in cluster.nodes}
    assert [took in before[name] for name in ("node-a", "node-b")].count(True) == 1, before
    assert standby in after["node-a"] and took not in after["node-a"]
    assert (took in after["node-b"]) == (took in before["node-a"])
    server_errors = [entry for entry in cluster.statuses if entry[2] >= 500]
    assert server_errors == [], server_errors
    # Nothing of the upload on either node's disk, nor (completed) in the bucket.
    samples = _samples(paths)
    assert len(_files_holding(tmp_path / "study", samples, upload_id)) == len(paths)
    for node in cluster.nodes:
        assert _files_holding(node.data_dir, samples, upload_id) == [], node.name
    assert s3_server.keys(f"uploads/{upload_id}/") == []
    assert s3_server.multipart_uploads(f"uploads/{upload_id}/") == []

    # Signing out on one node ends the upload token on every node within
    # UPLOAD_TOKEN_RECHECK_SECONDS (each web process trusts a verified token that long).
    chunk_index, chunk_data = chunks[0]
    out = cluster.request("POST", "/api/v1/auth/logout", json={"refresh": tokens["refresh"]})
    assert out.status_code == 204, out.text
    signed_out = time.monotonic()
    refused: dict[str, float] = {}
    while len(refused) < len(cluster.nodes) and time.monotonic() - signed_out < 60:
        for node in cluster.nodes:
            answer = requests.put(
                f"{node.base}/api/v1/upload/{upload_id}/chunk?index={chunk_index}",
                data=chunk_data,
                headers={**headers, "Content-MD5": content_md5(chunk_data)},
                timeout=30,
            )
            if answer.status_code == 401:
                refused.setdefault(node.name, time.monotonic() - signed_out)
            else:
                assert node.name not in refused, "a refused token was accepted again"
                assert answer.status_code == 409, answer.text  # trusted: the upload is done
        time.sleep(0.2)
    assert set(refused) == {"node-a", "node-b"}, refused
    # The bound, with room for a loaded machine (each web process checks within it).
    assert max(refused.values()) < RECHECK_SECONDS + 10, refused
