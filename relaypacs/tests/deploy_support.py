"""What the deployment tests (test_deploy_*.py) share: a fresh PostgreSQL database, a
self-signed certificate, Debian's nginx running the shipped ``deploy/nginx/relaypacs.conf``
on free ports, and the production environment of a web node."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from uploads.tests.helpers import free_port

REPO = Path(__file__).resolve().parents[2]
NGINX_CONF = REPO / "deploy" / "nginx" / "relaypacs.conf"
# nginx starts in well under a second; a loaded 2-core machine gets far more.
NGINX_READY_SECONDS = 30
POSTGRES_ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"


def this_runs_redis_url() -> str:
    """The Redis database of this test run (the broker's number, see COMMON rules)."""
    broker = os.environ.get("CELERY_BROKER_URL", "")
    return broker if broker.startswith("redis://") else "redis://127.0.0.1:6379/11"


def postgres_server_url() -> str:
    """The PostgreSQL server of this test run (DATABASE_URL's server), as its admin database."""
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        return url.rsplit("/", 1)[0] + "/postgres"
    return POSTGRES_ADMIN_URL


@contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for processes the test starts; dropped afterwards."""
    import psycopg

    admin = postgres_server_url()
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(
            admin.replace("postgres://", "postgresql://"), autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, made with openssl for this test only."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "relaypacs.crt", directory / "relaypacs.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def _substitute(text: str, old: str, new: str) -> str:
    """Replace a line of the shipped file that must be there exactly once."""
    assert text.count(old) == 1, f"deploy/nginx/relaypacs.conf no longer has {old!r} once"
    return text.replace(old, new)


def render_nginx_conf(
    *,
    upstreams: list[int],
    http_port: int,
    https_port: int,
    cert: Path,
    key: Path,
    access_log: Path,
) -> str:
    """The shipped conf with only the upstream servers, listen ports, certificate paths
    and the access log's path changed (everything else, its format too, as shipped)."""
    text = NGINX_CONF.read_text()
    servers = "\n    ".join(f"server 127.0.0.1:{port};" for port in upstreams)
    text = _substitute(text, "server web:8000;", servers)
    text = _substitute(text, "listen 80;", f"listen 127.0.0.1:{http_port};")
    text = _substitute(text, "listen [::]:80;", "")
    text = _substitute(text, "listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;")
    text = _substitute(text, "listen [::]:443 ssl http2;", "")
    text = _substitute(text, "/etc/nginx/certs/relaypacs.crt", str(cert))
    text = _substitute(text, "/etc/nginx/certs/relaypacs.key", str(key))
    text = _substitute(text, "/var/log/nginx/relaypacs-access.log", str(access_log))
    return text


@dataclass
class RunningNginx:
    https_base: str
    http_base: str
    cert: Path
    access_log: Path
    error_log: Path

    def upstreams_used(self) -> list[str]:
        """The upstream address of each request logged so far, in order."""
        lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
        return [line.split(" ", 2)[1] for line in lines if line.strip()]

    def log_lines(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        pytest.fail(
            "nginx is not installed: run scripts/bootstrap.sh (apt-get install nginx-core)."
        )
    return found


@contextmanager
def running_nginx(directory: Path, *, upstreams: list[int]) -> Iterator[RunningNginx]:
    """Debian's nginx in the foreground with the shipped conf, on free local ports."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed_certificate(directory / "tls")
    http_port, https_port = free_port(), free_port()
    access_log, error_log = directory / "access.log", directory / "error.log"
    site = directory / "relaypacs.conf"
    site.write_text(
        render_nginx_conf(
            upstreams=upstreams,
            http_port=http_port,
            https_port=https_port,
            cert=cert,
            key=key,
            access_log=access_log,
        )
    )
    temp = directory / "temp"
    temp.mkdir(exist_ok=True)
    # nginx run as root switches its workers to "nobody", who cannot read a test's files.
    user = "user root;" if os.geteuid() == 0 else ""
    main = directory / "nginx.conf"
    main.write_text(
        f"""
{user}
daemon off;
worker_processes 1;
pid {directory / "nginx.pid"};
error_log {error_log} info;
events {{ worker_connections 512; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;  # the shipped conf's own access log (its format) is what is read
    client_body_temp_path {temp / "body"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
    include {site};
}}
"""
    )
    binary = nginx_binary()
    check = subprocess.run(
        [binary, "-t", "-p", str(directory), "-c", str(main)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
    with open(directory / "nginx.out", "wb") as out:
        process = subprocess.Popen(
            [binary, "-p", str(directory), "-c", str(main)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = RunningNginx(
        https_base=f"https://127.0.0.1:{https_port}",
        http_base=f"http://127.0.0.1:{http_port}",
        cert=cert,
        access_log=access_log,
        error_log=error_log,
    )
    try:
        deadline = time.monotonic() + NGINX_READY_SECONDS
        while True:
            assert process.poll() is None, (directory / "nginx.out").read_text()
            try:
                requests.get(f"{running.http_base}/nginx-health", timeout=2)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)
        yield running
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
