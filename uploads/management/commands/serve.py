"""``manage.py serve``: the whole product on one machine (what ``make run`` starts).

Migrates, starts a local Orthanc PACS unless ``PACS_DICOMWEB_URL``/``PACS_ORTHANC_URL`` is
set, a Celery worker (and one for the daily backup alone), Celery beat and the web server (uvicorn, ASGI), then supervises
them: a child that dies (a crashed or killed worker) is restarted, one that keeps dying
stops the whole relay, and Ctrl-C (or SIGTERM) stops everything it started.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from pacs.local_orthanc import LocalOrthanc
from relaypacs import metrics
from relaypacs.logging_context import uvicorn_logging_config
from relaypacs.static_collect import static_collect_if_changed

# Static files the product never serves (see _start).
STATIC_NOT_SERVED = ["*.map", "redoc"]
# Children get this long to stop cleanly after SIGTERM before they are killed.
STOP_GRACE_SECONDS = 15
# A child that dies more often than this within the window is broken, not unlucky.
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60
# How often the metrics files of processes that exited are marked dead (their live gauges
# removed; their counters stay in the totals).
METRICS_SWEEP_SECONDS = 10


def _lan_addresses() -> list[str]:
    """This machine's addresses (``hostname -I``), for the certificate's names."""
    try:
        out = subprocess.run(
            ["hostname", "-I"], capture_output=True, text=True, timeout=5, check=False
        )
    except OSError:
        return []
    return [a for a in out.stdout.split() if ":" not in a]


def lan_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for HTTPS on the clinic network, made once with openssl.

    It names localhost, this host's name and its addresses, and is kept in DATA_DIR so
    phones that trusted it keep trusting it; made again when it expires within 30 days.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = directory / "relaypacs-lan.crt", directory / "relaypacs-lan.key"
    if cert.exists() and key.exists():
        still_valid = subprocess.run(
            ["openssl", "x509", "-checkend", str(30 * 86400), "-noout", "-in", str(cert)],
            capture_output=True,
            check=False,
        )
        if still_valid.returncode == 0:
            return cert, key
    names = ["DNS:localhost", f"DNS:{socket.gethostname()}", "IP:127.0.0.1"]
    names += [f"IP:{address}" for address in _lan_addresses()]
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha256",
            # 825 days: the longest validity phones accept for a certificate they trust.
            "-days",
            "825",
            "-subj",
            "/CN=RelayPACS on the clinic network",
            "-addext",
            "subjectAltName=" + ",".join(dict.fromkeys(names)),
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    return cert, key


# Hosts that mean "every interface" or this machine: a browser on this machine should use
# localhost, the one plain-HTTP address browsers treat as a secure context (service worker,
# offline queue); 0.0.0.0 is not one.
_LOCAL_HOSTS = {"0.0.0.0", "127.0.0.1", "::", "::1", "localhost", ""}  # noqa: S104
# What `make run`'s environment may have set that manage.py needs to find the same data.
_ENVIRONMENT_FOR_MANAGE = ("DJANGO_SETTINGS_MODULE", "DATA_DIR", "DATABASE_URL")


def browser_url(*, host: str, port: int) -> str:
    """The address to open in a browser on this machine for a server bound to ``host``."""
    return f"http://{'localhost' if host in _LOCAL_HOSTS else host}:{port}/"


def createsuperuser_command(*, environ: Mapping[str, str], data_dir: Path) -> str:
    """The exact createsuperuser command for this environment, ready to paste."""
    names = {"DATA_DIR": str(data_dir)}
    for name in _ENVIRONMENT_FOR_MANAGE:
        if name in environ and name != "DATA_DIR":
            names[name] = environ[name]
    if names.get("DJANGO_SETTINGS_MODULE") == "relaypacs.settings.dev":
        names.pop("DJANGO_SETTINGS_MODULE")  # manage.py's own default
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in names.items())
    python = shlex.quote(str(Path(sys.executable)))
    manage = shlex.quote(str(Path(settings.BASE_DIR) / "manage.py"))
    return f"{prefix} {python} {manage} createsuperuser"


class Command(BaseCommand):
    help = "Run RelayPACS: web server, Celery worker and beat, and a local Orthanc PACS."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))  # noqa: S104
        parser.add_argument(
            "--web-workers", type=int, default=int(os.environ.get("WEB_WORKERS", "2"))
        )
        parser.add_argument(
            "--worker-concurrency", type=int, default=int(os.environ.get("WORKER_CONCURRENCY", "2"))
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.starters: dict[str, Callable[[], subprocess.Popen[bytes]]] = {}
        self.restarts: dict[str, list[float]] = {}
        self.stopping = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            self._start(options)
            self._supervise()
        finally:
            self._stop_all()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _start(self, options: dict[str, Any]) -> None:
        data_dir = Path(settings.DATA_DIR)
        self.stdout.write(f"RelayPACS data directory: {data_dir}")
        # Several nodes may start at once on one PostgreSQL: one migrates, the others wait.
        call_command("migrate_locked", verbosity=0)
        # Source maps and ReDoc (the API docs are Swagger UI) are not served: skipping them
        # halves the files compressed. Only when the static files changed since the last
        # start (collecting compresses them all: about 30 s of CPU).
        static_collect_if_changed(ignore_patterns=STATIC_NOT_SERVED)
        env = {**os.environ, "DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}
        env.setdefault("DJANGO_SETTINGS_MODULE", os.environ["DJANGO_SETTINGS_MODULE"])
        # Every web and Celery process counts into files here and /metrics sums them
        # (prometheus-client's multiprocess mode); emptied before any of them starts.
        self.metrics_dir = Path(
            os.environ.get(metrics.MULTIPROC_ENV) or data_dir / "prometheus-multiproc"
        )
        metrics.multiproc_dir_reset(self.metrics_dir)
        env[metrics.MULTIPROC_ENV] = str(self.metrics_dir)
        if settings.PACS_EMBEDDED:
            orthanc = LocalOrthanc(
                data_dir=data_dir / "orthanc",
                http_port=settings.PACS_EMBEDDED_PORT,
                dicom_port=settings.PACS_EMBEDDED_DICOM_PORT,
                username=settings.PACS_USERNAME,
                password=settings.PACS_PASSWORD,
            )
            if orthanc.is_up():
                raise CommandError(
                    f"Something already answers on {orthanc.url}. Stop it (or another "
                    "RelayPACS), or set PACS_EMBEDDED_PORT to a free port."
                )
            try:
                self.children.append(("orthanc", orthanc.start()))
                self.starters["orthanc"] = orthanc.start
            except (RuntimeError, FileNotFoundError) as exc:
                raise CommandError(
                    f"The local Orthanc PACS could not start: {exc}. Install it with "
                    "'apt-get install orthanc orthanc-dicomweb' (make run does), or set "
                    "PACS_DICOMWEB_URL to use another PACS."
                ) from exc
            self.stdout.write(
                f"Local PACS (Orthanc): {orthanc.url}  (DICOMweb {orthanc.dicomweb_url})"
            )
        else:
            self.stdout.write(f"PACS: {settings.PACS_DICOMWEB_URL or settings.PACS_ORTHANC_URL}")
        python = sys.executable
        logs = data_dir / "logs"
        logs.mkdir(exist_ok=True)
        # A beat killed by a power cut leaves its pidfile behind and would refuse to start.
        (data_dir / "celerybeat.pid").unlink(missing_ok=True)
        # With the embedded (filesystem) broker Celery runs its synchronous consumer loop,
        # which does not replace prefork pool processes killed by SIGKILL (seen here: the
        # worker kept receiving tasks and ran none). A thread pool dies whole instead, and
        # this supervisor restarts it; beat then re-dispatches the interrupted work.
        embedded_broker = settings.CELERY_BROKER_URL.startswith("filesystem://")
        pool = ["--pool=threads"] if embedded_broker else []
        self._spawn(
            "worker",
            [
                python,
                "-m",
                "celery",
                "-A",
                "relaypacs",
                "worker",
                "--loglevel=INFO",
                f"--concurrency={options['worker_concurrency']}",
                "--hostname=worker@%h",
                f"--queues={settings.CELERY_TASK_DEFAULT_QUEUE}",
                *pool,
            ],
            env,
        )
        # The daily backup's own worker (CELERY_TASK_ROUTES), one task at a time in one
        # process: a backup of an hour holds none of processing's slots. Its metrics go
        # to the shared folder; only the main worker serves METRICS_WORKER_PORT.
        self._spawn(
            "backup-worker",
            [
                python,
                "-m",
                "celery",
                "-A",
                "relaypacs",
                "worker",
                "--loglevel=INFO",
                "--pool=solo",
                # One task held: without it the worker reserves a second backup behind a
                # running one (prefetch is per slot).
                "--concurrency=1",
                "--hostname=backups@%h",
                f"--queues={settings.CELERY_BACKUP_QUEUE}",
            ],
            {**env, "METRICS_WORKER_PORT": "0"},
        )
        self._spawn(
            "beat",
            [
                python,
                "-m",
                "celery",
                "-A",
                "relaypacs",
                "beat",
                "--loglevel=INFO",
                f"--schedule={data_dir / 'celerybeat-schedule'}",
                f"--pidfile={data_dir / 'celerybeat.pid'}",
            ],
            env,
        )
        web = [
            python,
            "-m",
            "uvicorn",
            "relaypacs.asgi:application",
            "--host",
            options["host"],
            "--workers",
            str(options["web_workers"]),
            "--no-access-log",
            "--timeout-graceful-shutdown",
            "10",
            # Longer than nginx keeps an idle upstream connection (keepalive_timeout 3s in
            # deploy/nginx/relaypacs.conf): the proxy, not uvicorn, closes it first, so
            # it never reuses one uvicorn just closed (a 502 for a streamed chunk).
            "--timeout-keep-alive",
            "5",
            # Browsers offer permessage-deflate; each accepted connection would keep its own
            # zlib state (zlib's defaults: some 300 KB allocated), for live-event messages
            # of a few hundred bytes.
            "--ws-per-message-deflate",
            "false",
        ]
        if settings.LOG_FORMAT == "json":
            # uvicorn configures its own loggers: the same JSON lines as the product's.
            log_config = logs / "uvicorn-logging.json"
            log_config.write_text(json.dumps(uvicorn_logging_config()))
            web += ["--log-config", str(log_config)]
        self._spawn("web", [*web, "--port", str(settings.PORT)], env)
        self.stdout.write(
            f"RelayPACS is starting on {browser_url(host=options['host'], port=settings.PORT)} "
            f"(API docs at /api/v1/docs/). Press Ctrl-C to stop."
        )
        if settings.HTTPS_PORT:
            cert, key = lan_certificate(data_dir / "tls")
            tls = [
                "--port",
                str(settings.HTTPS_PORT),
                "--ssl-certfile",
                str(cert),
                "--ssl-keyfile",
                str(key),
            ]
            self._spawn("web-https", [*web, *tls], env)
            lan = _lan_addresses()
            where = ", ".join(f"https://{a}:{settings.HTTPS_PORT}/" for a in lan) or (
                f"https://<this machine>:{settings.HTTPS_PORT}/"
            )
            self.stdout.write(
                f"HTTPS for phones on the clinic network: {where} "
                f"with a self-signed certificate ({cert}). Install that file as a trusted "
                "certificate on each phone once, so the app can work offline."
            )
        if not get_user_model().objects.filter(is_superuser=True).exists():
            self.stdout.write(
                "No administrator exists yet. Create the first one in another terminal with:\n"
                f"  {createsuperuser_command(environ=os.environ, data_dir=data_dir)}\n"
                "(a superuser can sign in, upload and manage users at /admin/)."
            )

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.starters[name] = lambda: subprocess.Popen(argv, env=env)
        self.children.append((name, self.starters[name]()))

    def _supervise(self) -> None:
        """Restart a child that died (a crashed or killed worker must not stop the relay);
        give up and stop everything when one keeps dying."""
        swept = time.monotonic()
        while not self.stopping:
            if time.monotonic() - swept > METRICS_SWEEP_SECONDS:
                metrics.dead_processes_mark(self.metrics_dir)
                swept = time.monotonic()
            for position, (name, child) in enumerate(self.children):
                if child.poll() is None or self.stopping:
                    continue
                now = time.monotonic()
                recent = [
                    t for t in self.restarts.get(name, []) if now - t < RESTART_WINDOW_SECONDS
                ]
                if len(recent) >= MAX_RESTARTS:
                    self.stderr.write(
                        f"{name} keeps exiting (code {child.returncode}); stopping RelayPACS. "
                        f"See the messages above, and {settings.DATA_DIR}/orthanc/orthanc.log for the PACS."
                    )
                    self.stopping = True
                    break
                self.stderr.write(f"{name} exited with code {child.returncode}; restarting it.")
                self.restarts[name] = [*recent, now]
                try:
                    self.children[position] = (name, self.starters[name]())
                except (RuntimeError, OSError) as exc:
                    self.stderr.write(f"{name} could not be restarted: {exc}; stopping RelayPACS.")
                    self.stopping = True
                    break
            time.sleep(0.5)

    def _stop_all(self) -> None:
        for _, child in reversed(self.children):
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for _, child in reversed(self.children):
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.stdout.write("RelayPACS stopped.")
