"""deploy/nginx/relaypacs.conf as shipped, run by Debian's nginx with a certificate made
here, in front of two web nodes of the product (``manage.py serve`` each, production
settings, sharing a fresh PostgreSQL database, this run's Redis and the upload folder):
a full upload over HTTPS/HTTP2, the client address the product sees, cache and security
headers, and the live events (WebSocket and SSE) through the proxy."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter

from uploads.tests.helpers import iter_file_chunks, manifest, sop_uid
from uploads.tests.product import REPO, RunningProduct, running_product
from uploads.tests.synthetic import write_study

from .deploy_support import (
    RunningNginx,
    fresh_postgres_database,
    running_nginx,
    this_runs_redis_url,
)

pytestmark = pytest.mark.e2e

PASSWORD = "a long admin password"
# The client's own address: another loopback address than nginx's way to the web nodes
# (127.0.0.1), so the address the product records tells which hop it came from.
CLIENT_ADDRESS = "127.0.0.2"
SPOOFED = "203.0.113.9"
LARGEST_CHUNK = 16 * 1024 * 1024


class FromAddress(HTTPAdapter):
    """requests from a chosen local address."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def client_session(cert: Path) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would win over verify
    session.verify = str(cert)
    session.mount("https://", FromAddress(CLIENT_ADDRESS))
    session.mount("http://", FromAddress(CLIENT_ADDRESS))
    return session


@dataclass
class Stack:
    nginx: RunningNginx
    nodes: list[RunningProduct]
    access: str
    http: requests.Session

    @property
    def base(self) -> str:
        return self.nginx.https_base

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access}"}


def node_environment(*, database_url: str, shared: Path) -> dict[str, str]:
    """A web node's production environment behind one proxy."""
    redis_url = this_runs_redis_url()
    return {
        "DJANGO_SETTINGS_MODULE": "relaypacs.settings.production",
        "SECRET_KEY": "test-nginx-" + "k" * 50,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "TRUSTED_PROXY_COUNT": "1",
        "PUBLIC_BASE_URL": "https://localhost",
        "METRICS_TOKEN": secrets.token_urlsafe(24),
        "UPLOAD_STORAGE_DIR": str(shared / "uploads"),
        "REPORT_STORAGE_DIR": str(shared / "reports"),
        "WEB_WORKERS": "1",
        "WORKER_CONCURRENCY": "1",
        "NOTIFICATIONS_SESSION_CHECK_SECONDS": "1",
        # A queue of this stack's own: another test run's worker on the same Redis
        # database must not take (and lose) these nodes' tasks.
        "CELERY_QUEUE": f"relaypacs-nginx-test-{uuid.uuid4().hex[:8]}",
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, orthanc: Any) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("nginx-stack")
    with ExitStack() as stack, fresh_postgres_database("h8_nginx") as database_url:
        nodes = []
        # One after the other: each node migrates the shared database when it starts.
        # Each node's port is chosen by running_product just before it starts: one chosen
        # earlier may meanwhile be taken as another connection's local port.
        for name in ("node-a", "node-b"):
            env = node_environment(database_url=database_url, shared=root / "shared")
            (root / name).mkdir()
            nodes.append(stack.enter_context(running_product(root / name, orthanc, **env)))
        ports = [int(node.env["PORT"]) for node in nodes]
        nginx = stack.enter_context(running_nginx(root / "nginx", upstreams=ports))
        subprocess.run(
            [sys.executable, "manage.py", "createsuperuser", "--noinput"],
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=120,
            env={
                **nodes[0].env,
                "DJANGO_SUPERUSER_USERNAME": "admin",
                "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
                "DJANGO_SUPERUSER_EMAIL": "admin@example.org",
            },
        )
        http = client_session(nginx.cert)
        login = http.post(
            f"{nginx.https_base}/api/v1/auth/login",
            json={"username": "admin", "password": PASSWORD},
            # A client claiming another address: with one trusted proxy it must not count.
            headers={"X-Forwarded-For": SPOOFED},
            timeout=60,
        )
        assert login.status_code == 200, login.text
        yield Stack(nginx=nginx, nodes=nodes, access=login.json()["access"], http=http)


def curl_put_chunk(
    stack: Stack, upload: dict[str, Any], index: int, data: bytes, work: Path
) -> tuple[int, str, dict[str, Any]]:
    """One chunk PUT with curl over HTTP/2 from the client address: (status, HTTP
    version, body)."""
    body = work / f"chunk-{index}"
    body.write_bytes(data)
    out = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--http2",
            "--cacert",
            str(stack.nginx.cert),
            "--interface",
            CLIENT_ADDRESS,
            "--request",
            "PUT",
            "--header",
            f"Authorization: Bearer {upload['upload_token']}",
            "--header",
            f"Content-MD5: {base64.b64encode(hashlib.md5(data).digest()).decode()}",  # noqa: S324
            "--header",
            "Content-Type: application/octet-stream",
            "--data-binary",
            f"@{body}",
            "--output",
            str(work / f"answer-{index}"),
            "--write-out",
            "%{http_code} %{http_version}",
            f"{stack.base}/api/v1/upload/{upload['upload_id']}/chunk?index={index}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    body.unlink()
    status, version = out.stdout.split()
    answer = json.loads((work / f"answer-{index}").read_text() or "{}")
    return int(status), version, answer


def wait_for_state(stack: Stack, upload: dict[str, Any], states: set[str]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {upload['upload_token']}"}
    deadline = time.monotonic() + 180
    while True:
        status: dict[str, Any] = stack.http.get(
            f"{stack.base}/api/v1/upload/{upload['upload_id']}/status",
            headers=headers,
            timeout=30,
        ).json()
        if status["state"] in states or time.monotonic() > deadline:
            return status
        time.sleep(0.3)


def upload_through_nginx(stack: Stack, paths: list[Path], work: Path) -> dict[str, Any]:
    """A whole upload through nginx with chunks of the largest size, sent with curl over
    HTTP/2; returns the upload once its chunks are in and it is completed."""
    init = stack.http.post(
        f"{stack.base}/api/v1/upload/init",
        json=manifest(paths, chunk_size=LARGEST_CHUNK),
        headers=stack.auth(),
        timeout=60,
    )
    assert init.status_code == 201, init.text
    upload: dict[str, Any] = init.json()
    work.mkdir(parents=True, exist_ok=True)
    for index, data in iter_file_chunks(paths, LARGEST_CHUNK):
        status, version, answer = curl_put_chunk(stack, upload, index, data, work)
        assert (status, version) == (200, "2"), (status, version, answer)
        assert answer["received"] is True
    complete = stack.http.post(
        f"{stack.base}/api/v1/upload/{upload['upload_id']}/complete",
        headers={"Authorization": f"Bearer {upload['upload_token']}"},
        timeout=60,
    )
    assert complete.status_code == 202, complete.text
    return upload


def test_an_upload_through_nginx_over_http2_reaches_the_pacs_byte_for_byte(
    stack, orthanc_clean, tmp_path
):
    # Two instances of 9 MiB: a first chunk of exactly the largest size, then the rest.
    paths = write_study(tmp_path / "study", instances=2, instance_bytes=9 * 1024 * 1024)
    upload = upload_through_nginx(stack, paths, tmp_path / "chunks")
    status = wait_for_state(stack, upload, {"completed", "failed"})
    assert status["state"] == "completed", status
    for path in paths:
        assert orthanc_clean.instance_file(sop_uid(path)) == path.read_bytes()

    chunk_lines = [line for line in stack.nginx.log_lines() if "/chunk" in line]
    assert len(chunk_lines) == 2 and all(
        line.startswith("200 ") and " HTTP/2.0 PUT " in line for line in chunk_lines
    ), chunk_lines
    # Both web nodes served this client's requests (nginx balances between them).
    used = {address for address in stack.nginx.upstreams_used() if address != "-"}
    assert used == {f"127.0.0.1:{node.env['PORT']}" for node in stack.nodes}, used


def test_the_product_records_the_real_client_address_not_a_spoofed_one(stack):
    sessions = stack.http.get(
        f"{stack.base}/api/v1/auth/sessions", headers=stack.auth(), timeout=30
    )
    assert sessions.status_code == 200, sessions.text
    current = [s for s in sessions.json() if s["current"]]
    assert [s["ip_address"] for s in current] == [CLIENT_ADDRESS]


def test_a_body_larger_than_the_largest_chunk_is_refused_with_a_sentence(stack):
    too_big = b"\0" * (LARGEST_CHUNK + 1)
    response = stack.http.put(
        f"{stack.base}/api/v1/upload/00000000-0000-0000-0000-000000000000/chunk?index=0",
        data=too_big,
        headers={"Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large"
    assert error["message"].endswith(".") and "16 MiB" in error["hint"]


def _one_header(response: requests.Response, name: str) -> str:
    values = response.raw.headers.getlist(name)
    assert len(values) == 1, (name, values)  # never a proxy copy beside the product's
    return str(values[0])


def test_pwa_and_static_files_carry_cache_and_security_headers(stack):
    dist = REPO / "frontend" / "dist"
    asset = next((dist / "assets").glob("index-*.js")).name
    expected = {
        "/sw.js": "no-cache",
        "/": "no-cache",
        "/manifest.webmanifest": "no-cache",
        f"/assets/{asset}": "public, max-age=31536000, immutable",
        "/static/admin/css/base.css": "public, max-age=3600",
        "/icon-192.png": "public, max-age=86400",
    }
    for path, cache_control in expected.items():
        response = stack.http.get(f"{stack.base}{path}", timeout=30)
        assert response.status_code == 200, (path, response.status_code)
        assert _one_header(response, "Cache-Control") == cache_control, path
        assert _one_header(response, "Strict-Transport-Security").startswith("max-age=31536000")
        assert _one_header(response, "X-Content-Type-Options") == "nosniff"
        assert _one_header(response, "X-Frame-Options") == "DENY"
        assert _one_header(response, "Referrer-Policy") == "same-origin"
        assert "camera=(self)" in _one_header(response, "Permissions-Policy")
        assert "Server" not in response.headers or "/" not in response.headers["Server"]
    sw = stack.http.get(f"{stack.base}/sw.js", timeout=30)
    assert sw.content == (dist / "sw.js").read_bytes()
    # The app's page runs under the production policy, served by WhiteNoise or by Django.
    for page in ("/", "/verify-email"):
        policy = _one_header(
            stack.http.get(f"{stack.base}{page}", timeout=30), "Content-Security-Policy"
        )
        assert "default-src 'self'" in policy and "script-src 'self'" in policy, (page, policy)
    # API answers are not given a cache lifetime by the proxy.
    health = stack.http.get(f"{stack.base}/api/v1/health", timeout=30)
    assert health.status_code == 200 and "max-age" not in health.headers.get("Cache-Control", "")


def test_the_access_log_keeps_no_query_string_or_referer(stack):
    # A worklist search and the sign-in redirect carry a patient's name in their query.
    marker = "Synthetic^Patientname"
    for path in (f"/reports/?q={marker}", f"/accounts/login/?next=/reports/%3Fq%3D{marker}"):
        response = stack.http.get(
            f"{stack.base}{path}",
            headers={"Referer": f"{stack.base}/reports/?q={marker}"},
            timeout=30,
            allow_redirects=False,
        )
        assert response.status_code < 500, (path, response.status_code)
    deadline = time.monotonic() + 30
    while not [line for line in stack.nginx.log_lines() if " /accounts/login/ " in line]:
        assert time.monotonic() < deadline, "nginx never logged the sign-in page"
        time.sleep(0.2)
    lines = stack.nginx.log_lines()
    assert any(" GET /reports/ " in line for line in lines), lines[-5:]
    assert not [line for line in lines if "Patientname" in line or "?" in line], lines[-5:]


def test_metrics_are_not_published_through_nginx(stack):
    assert stack.http.get(f"{stack.base}/metrics", timeout=30).status_code == 404


def test_plain_http_is_sent_to_https(stack):
    response = stack.http.get(
        f"{stack.nginx.http_base}/api/v1/health", allow_redirects=False, timeout=30
    )
    assert response.status_code == 301
    assert response.headers["Location"] == "https://127.0.0.1/api/v1/health"


def test_websocket_and_sse_through_nginx_get_the_upload_events(
    stack, orthanc_clean, tmp_path, monkeypatch
):
    pytest.importorskip("notifications.consumers")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stack.nginx.cert))  # SseClient's requests
    from websockets.sync.client import connect

    from notifications.tests.live_clients import SseClient

    context = ssl.create_default_context(cafile=str(stack.nginx.cert))
    ws = connect(  # noqa: SIM115  (closed below)
        stack.base.replace("https://", "wss://") + "/ws/notifications",
        additional_headers=stack.auth(),
        # A browser sends its page's origin; production checks it against ALLOWED_HOSTS.
        origin=stack.base,
        ssl=context,
        open_timeout=30,
        legacy=True,
    )
    ws.send(json.dumps({"type": "resume", "after": None}))
    assert json.loads(ws.recv(timeout=30))["type"] == "ready"
    sse = SseClient(stack.base, access=stack.access)
    assert sse.status_code == 200
    assert sse.response.headers["Content-Type"].startswith("text/event-stream")
    # Unbuffered: the first event arrives while the stream is still open.
    assert sse.next()["type"] == "ready"

    paths = write_study(tmp_path / "study", instances=1, instance_bytes=1024 * 1024)
    upload = upload_through_nginx(stack, paths, tmp_path / "chunks")

    def upload_types(next_message: Any) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + 180
        while "upload.completed" not in seen and time.monotonic() < deadline:
            message = next_message()
            if message.get("upload_id") == upload["upload_id"]:
                seen.append(message["type"])
        return seen

    def ws_next() -> dict[str, Any]:
        while True:
            message: dict[str, Any] = json.loads(ws.recv(timeout=120))
            if message["type"] != "heartbeat":
                return message

    status = wait_for_state(stack, upload, {"completed", "failed"})
    assert status["state"] == "completed", status
    assert upload_types(ws_next)[-1] == "upload.completed"
    assert upload_types(sse.next)[-1] == "upload.completed"
    ws.close()
    sse.close()
    deadline = time.monotonic() + 30  # nginx logs a WebSocket when it closes
    while not (ws_lines := [ln for ln in stack.nginx.log_lines() if "/ws/notifications" in ln]):
        assert time.monotonic() < deadline, "nginx never logged the WebSocket"
        time.sleep(0.2)
    assert ws_lines[-1].startswith("101 "), ws_lines
