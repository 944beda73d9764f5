"""Starting and stopping what the benchmark talks to: Orthanc, nginx and RelayPACS.

Every start function registers the matching stop on an ``ExitStack``, so leaving the
stack (normally, on an error or on Ctrl-C) stops every process the benchmark started.
Processes are stopped by their own id: a signal to the process, then SIGKILL to the
process group that was created for it (``start_new_session``) if anything is left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import requests

from pacs.local_orthanc import LocalOrthanc

REPO = Path(__file__).resolve().parent.parent
# Migrating a new SQLite file and starting four processes takes seconds; this is generous.
START_TIMEOUT_SECONDS = 90
# serve gives its children 15 s to stop; a little more so it can finish that on its own.
STOP_GRACE_SECONDS = 20
BENCH_USERNAME = "bench"
BENCH_PASSWORD = "a long benchmark password"  # a throwaway local account
ORTHANC_USERNAME = "bench"
ORTHANC_PASSWORD = "bench-orthanc"  # a throwaway local Orthanc
# Environment that would point the product at another database or broker than the
# embedded default that ``make run`` uses.
FOREIGN_ENV = ("DATABASE_URL", "CELERY_BROKER_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")
# Left at their defaults so the product runs as ``make run`` starts it.
DEFAULTED_ENV = ("UPLOAD_FSYNC", "WEB_WORKERS", "WORKER_CONCURRENCY", "PACS_STOW_BATCH_BYTES")


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback TCP ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def stop_process(
    process: subprocess.Popen[bytes], *, first_signal: int = signal.SIGTERM, own_group: bool = False
) -> None:
    """Send ``first_signal``, wait up to STOP_GRACE_SECONDS, then SIGKILL.

    With ``own_group`` (the process was started with ``start_new_session``) the SIGKILL
    goes to its whole process group, so children it left behind die with it.
    """
    if process.poll() is None:
        process.send_signal(first_signal)
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if own_group:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def wait_until(
    check: Callable[[], bool], *, what: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    """Poll ``check()`` until it is true; RuntimeError if ``process`` dies or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {process.returncode}; see {log}:\n{log.read_text()[-3000:]}"
            )
        try:
            if check():
                return
        except (requests.RequestException, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start within {START_TIMEOUT_SECONDS}s; see {log}")


# --- Orthanc ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Orthanc(LocalOrthanc):
    """A started LocalOrthanc and the id of its process (for CPU accounting)."""

    pid: int = 0


def start_orthanc(stack: ExitStack, directory: Path, *, name: str) -> Orthanc:
    """A fresh Orthanc (Debian package, DICOMweb plugin) on free ports, with basic auth.

    Every Orthanc of the benchmark gets this same configuration (LocalOrthanc's).
    """
    http_port, dicom_port = free_ports(2)
    server = Orthanc(
        data_dir=directory,
        http_port=http_port,
        dicom_port=dicom_port,
        username=ORTHANC_USERNAME,
        password=ORTHANC_PASSWORD,
        name=name,
    )
    process = server.start()
    stack.callback(stop_process, process)
    return replace(server, pid=process.pid)


def orthanc_instance_count(server: LocalOrthanc, study_uid: str) -> int:
    """How many instances the Orthanc lists for the study (QIDO-RS), 0 when unknown."""
    response = requests.get(
        f"{server.dicomweb_url}/studies",
        params={"StudyInstanceUID": study_uid, "includefield": "00201208"},
        headers={"Accept": "application/dicom+json"},
        auth=(server.username, server.password),
        timeout=60,
    )
    response.raise_for_status()
    studies = response.json() if response.content.strip() else []
    if not studies:
        return 0
    return int(studies[0].get("00201208", {}).get("Value", [0])[0])


# --- nginx -----------------------------------------------------------------------------

# Debian's own nginx.conf uses ``worker_processes auto`` (one per core); the body limits
# are those of issue #2. ``dav_methods PUT`` writes each body to a temporary file in
# client_body_temp_path and renames it into place, without fsync.
NGINX_CONF = """\
user root;
worker_processes auto;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /put/ {{
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 20m;
            client_body_buffer_size 2m;
        }}
    }}
}}
"""


@dataclass(frozen=True)
class Nginx:
    """A running nginx with a WebDAV PUT location at ``/put/``."""

    port: int
    root: Path
    pid: int

    def put_dir(self, name: str) -> Path:
        """Where ``PUT /put/<name>/...`` lands on disk."""
        return self.root / "put" / name


def start_nginx(stack: ExitStack, directory: Path) -> Nginx:
    """nginx as a foreground child with a WebDAV PUT location at ``/put/``."""
    (port,) = free_ports(1)
    prefix = directory / "prefix"
    root = directory / "root"
    for path in (prefix, root / "put"):
        path.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, root=root, port=port))
    log = prefix / "stdout.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(prefix)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack.callback(stop_process, process, own_group=True)
    url = f"http://127.0.0.1:{port}/"
    wait_until(
        lambda: requests.get(url, timeout=1).status_code > 0,
        what="nginx",
        process=process,
        log=prefix / "error.log",
    )
    return Nginx(port=port, root=root, pid=process.pid)


# --- RelayPACS -------------------------------------------------------------------------


@dataclass(frozen=True)
class Relay:
    """A running RelayPACS: ``process`` is ``manage.py serve`` (or the web server alone)."""

    base: str
    port: int
    env: Mapping[str, str]
    process: subprocess.Popen[bytes]
    log: Path


def relay_env(data_dir: Path, port: int, pacs: LocalOrthanc, **extra: str) -> dict[str, str]:
    """The environment of ``make run`` with PACS_* pointing at ``pacs``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV + DEFAULTED_ENV}
    env.update(
        DATA_DIR=str(data_dir),
        PORT=str(port),
        HOST="127.0.0.1",
        PACS_DICOMWEB_URL=pacs.dicomweb_url,
        PACS_ORTHANC_URL=pacs.url,
        PACS_USERNAME=pacs.username,
        PACS_PASSWORD=pacs.password,
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def manage(env: Mapping[str, str], *args: str) -> None:
    """Run ``manage.py <args>`` with ``env``; RuntimeError with its output if it fails."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env={**env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


def create_bench_user(env: Mapping[str, str]) -> None:
    """The benchmark's superuser, in the database that ``env`` points to."""
    manage(
        {
            **env,
            "DJANGO_SUPERUSER_USERNAME": BENCH_USERNAME,
            "DJANGO_SUPERUSER_PASSWORD": BENCH_PASSWORD,
            "DJANGO_SUPERUSER_EMAIL": "bench@example.org",
        },
        "createsuperuser",
        "--noinput",
    )


def _spawn(
    stack: ExitStack,
    argv: list[str],
    env: Mapping[str, str],
    log: Path,
    *,
    first_signal: int,
    cwd: Path = REPO,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session, logging to ``log``; stopped when ``stack`` closes."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack.callback(stop_process, process, first_signal=first_signal, own_group=True)
    return process


def _healthy(base: str) -> bool:
    """Whether the API's health check answers 200."""
    return requests.get(f"{base}/api/v1/health", timeout=2).status_code == 200


def start_relay(
    stack: ExitStack, directory: Path, pacs: LocalOrthanc, *, code: Path = REPO, **extra_env: str
) -> Relay:
    """``manage.py serve`` exactly as ``make run`` starts it, forwarding to ``pacs``.

    ``code``: the source tree it runs from (another copy of the code, to compare a change
    with what it changes in one run). Waits until the API answers, then creates the
    benchmark user. Stopped with SIGINT (Ctrl-C), which serve handles by stopping its
    children.
    """
    (port,) = free_ports(1)
    directory.mkdir(parents=True, exist_ok=True)
    env = relay_env(directory / "data", port, pacs, **extra_env)
    log = directory / "serve.log"
    process = _spawn(
        stack,
        [sys.executable, "manage.py", "serve"],
        env,
        log,
        first_signal=signal.SIGINT,
        cwd=code,
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: _healthy(base), what="manage.py serve", process=process, log=log)
    create_bench_user(env)
    return Relay(base=base, port=port, env=env, process=process, log=log)


def prepare_data_dir(directory: Path, pacs: LocalOrthanc) -> dict[str, str]:
    """A migrated DATA_DIR with the benchmark user, for web servers started alone."""
    env = relay_env(directory, 0, pacs)
    manage(env, "migrate", "--noinput")
    create_bench_user(env)
    return env


def start_web_only(
    stack: ExitStack, base_env: Mapping[str, str], argv: list[str], log: Path, **extra_env: str
) -> Relay:
    """Only a web server (``argv`` with ``{port}`` filled in) on a prepared DATA_DIR.

    For comparing servers on chunk ingest, which needs no Celery worker.
    """
    (port,) = free_ports(1)
    env = {**base_env, "PORT": str(port), **extra_env}
    process = _spawn(
        stack, [a.format(port=port) for a in argv], env, log, first_signal=signal.SIGTERM
    )
    base = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: _healthy(base), what=argv[2] if len(argv) > 2 else argv[0], process=process, log=log
    )
    return Relay(base=base, port=port, env=env, process=process, log=log)
