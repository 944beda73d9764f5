"""50 clinics at once (issue 17): 50 clinics upload a 20 MB study each, all at the same
time, over HTTPS through nginx (``deploy/nginx/relaypacs.conf`` as shipped) to two web
processes, on this machine.

The stack: Debian's nginx with a self-signed certificate made here, ``worker_processes
auto`` as in the official nginx image, in front of two ``manage.py serve`` nodes with the
production settings (one web process and one Celery worker of concurrency 1 each, beat on
both), sharing one PostgreSQL database (created here, dropped at the end), one Redis
database and the upload folder, forwarding to one Orthanc (DICOMweb). Each clinic has its
own facility and user, signs in through the API like the PWA (all 50 at once), then, at
one signal, all 50 send their study like the PWA does (``bench/clinic_client.py``) and
wait for ``completed``. Afterwards every instance is fetched from Orthanc
(``/instances/{id}/file``) and its SHA-256 compared with the file sent.

Measured: every chunk PUT's latency at the client (p50, p95, max), errors (every answer
that is not 2xx and every connection error, retried or not), the time until the last
study is completed, throughput, CPU seconds of each process (both web processes, the
workers, beat, nginx, Orthanc, PostgreSQL's backends of this database, the client
itself) and their peak RSS, and the load of the machine at the start and the end (other
work shares these 2 cores). The figures are printed and, unless ``--quick`` or
``--no-record``, appended to ``bench/RESULTS.md``.

Usage: ``.venv/bin/python bench/load_clinics.py [--quick] [--clinics N] [--study-mb M]
[--database-url postgres://.../name] [--redis-url redis://.../N] [--no-record] [--keep-temp]``
(``--quick``: 5 clinics of 2 MB, to check the bench in about a minute).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402
import requests  # noqa: E402
from pydicom import dcmread  # noqa: E402

from bench import machine, servers, studies  # noqa: E402
from bench.clinic_client import CHUNK_SIZE, Clinic, ClinicResult, Endpoint  # noqa: E402
from bench.usage import machine_busy_seconds, process_role  # noqa: E402
from relaypacs.tests.deploy_support import render_nginx_conf, self_signed_certificate  # noqa: E402

RESULTS = REPO / "bench" / "RESULTS.md"
# Issue 17's goals.
GOAL_P95_SECONDS = 1.0
CLINICS = 50
STUDY_BYTES = 20 * 1000 * 1000
QUICK_CLINICS = 5
QUICK_STUDY_BYTES = 2 * 1000 * 1000
# A CT slice: 512 x 512 16-bit pixels, a file of about 0.5 MB; 39 of them make a 20 MB study.
INSTANCE_BYTES = 512 * 1024
INSTANCE_FILE_BYTES = INSTANCE_BYTES + 400  # with the synthetic header
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/relaypacs_bench_load"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PASSWORD = "a long load-test password"  # throwaway local accounts
# Each clinic connects from its own loopback address (127.0.<third>.<n>), as clinics come
# from their own addresses: the sign-in throttle (30 a minute per address) and the access
# log see one clinic each.
CLIENT_NETWORK = "127.0.{third}.{host}"
# CPU and RSS are read this often: enough for peaks of a chunk's life, cheap for ~20 processes.
SAMPLE_SECONDS = 0.5
# nginx starts in well under a second; a loaded machine takes longer.
NGINX_READY_SECONDS = 30
# Fetching the instances back from Orthanc: a few at once, Orthanc serves them from disk.
VERIFY_THREADS = 4


# --- The stack ---------------------------------------------------------------------------


@contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """The PostgreSQL database of ``url``, dropped if it exists, created empty, dropped after."""
    import psycopg

    server, name = url.rsplit("/", 1)
    if not re.fullmatch(r"[a-z0-9_]+", name):
        raise SystemExit(f"database name {name!r}: use lower-case letters, digits and _")
    admin = server.replace("postgres://", "postgresql://") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass(frozen=True)
class Node:
    """One ``manage.py serve`` node."""

    name: str
    port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path


def start_node(
    stack: ExitStack,
    directory: Path,
    *,
    name: str,
    orthanc: servers.Orthanc,
    database_url: str,
    redis_url: str,
    shared: Path,
    queue: str,
    secret_key: str,
) -> Node:
    """A production-settings node behind one proxy, as test_deploy_nginx.py starts one."""
    (port,) = servers.free_ports(1)
    directory.mkdir(parents=True, exist_ok=True)
    env = servers.relay_env(
        directory / "data",
        port,
        orthanc,
        DJANGO_SETTINGS_MODULE="relaypacs.settings.production",
        # One key for all nodes: a token signed by one is checked by the other.
        SECRET_KEY=secret_key,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        # A queue of this run's own: another run's worker on the same Redis must not take it.
        CELERY_QUEUE=queue,
        TRUSTED_PROXY_COUNT="1",
        PUBLIC_BASE_URL="https://localhost",
        METRICS_TOKEN=secrets.token_urlsafe(24),
        UPLOAD_STORAGE_DIR=str(shared / "uploads"),
        REPORT_STORAGE_DIR=str(shared / "reports"),
        # Two nodes of one web process and one worker process each: the two web processes
        # of the issue, and as many worker processes as compose's default (concurrency 2).
        WEB_WORKERS="1",
        WORKER_CONCURRENCY="1",
    )
    log = directory / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve"],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack.callback(servers.stop_process, process, first_signal=signal.SIGINT, own_group=True)
    base = f"http://127.0.0.1:{port}"
    servers.wait_until(
        lambda: (
            requests.get(f"{base}/api/v1/health", timeout=2, allow_redirects=False).status_code
            == 200
        ),
        what=f"manage.py serve ({name})",
        process=process,
        log=log,
    )
    return Node(name=name, port=port, env=env, process=process, log=log)


@dataclass(frozen=True)
class Proxy:
    https_port: int
    cert: Path
    access_log: Path
    error_log: Path
    pid: int


NGINX_MAIN = """\
{user}
daemon off;
# As the official nginx image's nginx.conf (docker-compose's nginx service): one per core.
worker_processes auto;
pid {directory}/nginx.pid;
error_log {error_log} warn;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {directory}/temp/body;
    proxy_temp_path {directory}/temp/proxy;
    fastcgi_temp_path {directory}/temp/fastcgi;
    uwsgi_temp_path {directory}/temp/uwsgi;
    scgi_temp_path {directory}/temp/scgi;
    include {site};
}}
"""


# The variant ``--nginx-buffers-chunks``: nginx reads each chunk whole into memory before
# passing it on (nginx's default, with a buffer large enough for the largest chunk).
STREAMED_CHUNKS = "        proxy_request_buffering off;\n"
BUFFERED_CHUNKS = "        proxy_request_buffering on;\n        client_body_buffer_size 16m;\n"


def start_nginx(
    stack: ExitStack, directory: Path, *, upstreams: list[int], buffer_chunks: bool = False
) -> Proxy:
    """Debian's nginx with the shipped site file (only ports, certificate and log paths
    changed, as the deployment tests do) in front of ``upstreams``; with ``buffer_chunks``
    the chunk location buffers each body in memory instead of streaming it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "temp").mkdir(exist_ok=True)
    cert, key = self_signed_certificate(directory / "tls")
    http_port, https_port = servers.free_ports(2)
    access_log, error_log = directory / "access.log", directory / "error.log"
    site = directory / "relaypacs.conf"
    text = render_nginx_conf(
        upstreams=upstreams,
        http_port=http_port,
        https_port=https_port,
        cert=cert,
        key=key,
        access_log=access_log,
    )
    if buffer_chunks:
        if text.count(STREAMED_CHUNKS) != 1:
            raise SystemExit("deploy/nginx/relaypacs.conf no longer streams chunks as expected")
        text = text.replace(STREAMED_CHUNKS, BUFFERED_CHUNKS)
    site.write_text(text)
    main = directory / "nginx.conf"
    main.write_text(
        NGINX_MAIN.format(
            # nginx run as root switches its workers to "nobody", who cannot read our files.
            user="user root;" if os.geteuid() == 0 else "",
            directory=directory,
            error_log=error_log,
            site=site,
        )
    )
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    log = directory / "nginx.out"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [binary, "-p", str(directory), "-c", str(main)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack.callback(servers.stop_process, process, own_group=True)
    servers.wait_until(
        lambda: requests.get(f"http://127.0.0.1:{http_port}/nginx-health", timeout=2).ok,
        what="nginx",
        process=process,
        log=log,
    )
    return Proxy(https_port, cert, access_log, error_log, process.pid)


USERS_SCRIPT = """
from django.contrib.auth.hashers import make_password
from accounts.models import Facility, Role, User
password = make_password({password!r})  # one hash for all: 50 bcrypt rounds take a while
for number in range(1, {count} + 1):
    facility = Facility.objects.create(name=f"Load clinic {{number:02d}}", code=f"load-{{number:02d}}")
    User.objects.create(
        username=f"clinic{{number:02d}}", password=password, role=Role.RADIOGRAPHER,
        facility=facility, email=f"clinic{{number:02d}}@example.org",
    )
"""


def create_clinics(env: dict[str, str], count: int) -> list[str]:
    """``count`` facilities, each with one radiographer; their usernames."""
    servers.manage(env, "shell", "-c", USERS_SCRIPT.format(password=PASSWORD, count=count))
    return [f"clinic{number:02d}" for number in range(1, count + 1)]


def client_address(number: int) -> str:
    return CLIENT_NETWORK.format(third=10 + number // 250, host=1 + number % 250)


# --- What the processes cost ---------------------------------------------------------------


@dataclass
class ProcessSampler:
    """CPU seconds and peak RSS of named process trees (and of PostgreSQL's backends of
    one database), sampled every SAMPLE_SECONDS, with CPU read at named marks.

    A process first seen after a mark counts from zero there (it was born after it); one
    that exits counts up to its last sample. Backends that live shorter than a sample
    period are missed.
    """

    roots: dict[str, int]
    database: str
    last: dict[int, float] = field(default_factory=dict)
    marks: dict[str, dict[int, float]] = field(default_factory=dict)
    peak_rss: dict[int, int] = field(default_factory=dict)
    roles: dict[int, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _processes(self) -> Iterator[tuple[str, psutil.Process]]:
        for label, pid in self.roots.items():
            try:
                root = psutil.Process(pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for process in tree:
                yield label, process
        marker = f" {self.database} "
        for process in psutil.process_iter(["name", "cmdline"]):
            if process.info["name"] == "postgres" and marker in " ".join(
                process.info["cmdline"] or []
            ):
                yield "PostgreSQL", process

    def sample(self) -> None:
        readings = []
        for label, process in self._processes():
            try:
                times = process.cpu_times()
                rss = process.memory_info().rss
                role = self.roles.get(process.pid) or (
                    f"{label}: backends"
                    if label == "PostgreSQL"
                    else f"{label}: {process_role(process)}"
                )
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            readings.append((process.pid, role, times.user + times.system, rss))
        with self._lock:
            for pid, role, seconds, rss in readings:
                self.roles[pid] = role
                self.last[pid] = seconds
                self.peak_rss[pid] = max(self.peak_rss.get(pid, 0), rss)

    def mark(self, name: str) -> None:
        """Read every process now and keep its CPU time under ``name``."""
        self.sample()
        with self._lock:
            self.marks[name] = dict(self.last)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()

    def start(self) -> None:
        self.mark("start")
        self._thread = threading.Thread(target=self._run, name="process-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.mark("end")

    def cpu(self, pid: int, start: str, end: str) -> float:
        with self._lock:
            after = self.marks.get(end, {}).get(pid)
            if after is None:
                return 0.0
            return after - self.marks.get(start, {}).get(pid, 0.0)

    def by_role(self, phases: Sequence[tuple[str, str]]) -> list[tuple[str, list[float], int, int]]:
        """(role, CPU seconds in each phase (start mark, end mark), peak RSS of one
        process, processes), by role."""
        cpu: dict[str, list[float]] = {}
        rss: dict[str, int] = {}
        count: Counter[str] = Counter()
        for pid, role in self.roles.items():
            row = cpu.setdefault(role, [0.0] * len(phases))
            for position, (start, end) in enumerate(phases):
                row[position] += self.cpu(pid, start, end)
            rss[role] = max(rss.get(role, 0), self.peak_rss.get(pid, 0))
            count[role] += 1
        return [(role, cpu[role], rss[role], count[role]) for role in sorted(cpu)]


# --- Checks and figures --------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def verify_in_orthanc(orthanc: servers.Orthanc, study: studies.Study) -> tuple[int, list[str]]:
    """(instances byte-identical in Orthanc, problems) for one study: every file looked up
    by its SOP Instance UID, fetched whole (/instances/{id}/file) and hashed; and Orthanc
    must hold no other instance of the study."""
    problems = []
    identical = 0
    with requests.Session() as http:
        http.auth = (orthanc.username, orthanc.password)
        for path in study.paths:
            sop_uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            found = http.post(f"{orthanc.url}/tools/lookup", data=sop_uid, timeout=60)
            found.raise_for_status()
            ids = [item["ID"] for item in found.json() if item.get("Type") == "Instance"]
            if len(ids) != 1:
                problems.append(f"{path.name}: {len(ids)} instances in Orthanc")
                continue
            digest = hashlib.sha256()
            with http.get(f"{orthanc.url}/instances/{ids[0]}/file", stream=True, timeout=60) as got:
                got.raise_for_status()
                for block in got.iter_content(1024 * 1024):
                    digest.update(block)
            if digest.hexdigest() == sha256_of(path):
                identical += 1
            else:
                problems.append(f"{path.name}: other bytes in Orthanc")
    listed = servers.orthanc_instance_count(orthanc, study.study_uid)
    if listed != len(study.paths):
        problems.append(f"study lists {listed} instances, {len(study.paths)} sent")
    return identical, problems


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, round(fraction * len(ordered) + 0.4999))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class AccessLog:
    chunks_by_upstream: dict[str, int]
    statuses: Counter[str]
    chunk_request_times: list[float]


def read_access_log(path: Path) -> AccessLog:
    """The shipped log format: status, upstream, protocol, method, uri, bytes, request_time, ..."""
    by_upstream: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    times = []
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = line.split(" ")
        if len(parts) < 7:
            continue
        status, upstream, _, method, uri, _, request_time = parts[:7]
        statuses[status] += 1
        if method == "PUT" and uri.endswith("/chunk"):
            by_upstream[upstream] += 1
            times.append(float(request_time))
    return AccessLog(dict(by_upstream), statuses, times)


NGINX_ERROR = re.compile(
    r"\[(?:error|crit|alert|emerg)\] [^:]*: (?:\*\d+ )?(?P<message>[^,]+)"
    r"(?:.*?request: \"(?P<method>[A-Z]+) (?P<path>[^ ?\"]+))?"
)


def nginx_errors(log: Path) -> Counter[str]:
    """nginx's error lines by message and request kind (``PUT chunk``), without ids."""
    found: Counter[str] = Counter()
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        match = NGINX_ERROR.search(line)
        if match:
            kind = match["path"].rstrip("/").rsplit("/", 1)[-1] if match["path"] else ""
            where = f" ({match['method']} {kind})" if match["method"] else ""
            found[match["message"].strip() + where] += 1
    return found


def error_lines(log: Path) -> int:
    """Lines of a serve log that report an error or a traceback."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(1 for line in text.splitlines() if re.search(r"ERROR|CRITICAL|Traceback", line))


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


# --- The run -------------------------------------------------------------------------------

# The phases CPU is reported by: the sign-in of every clinic, the start signal until the
# last chunk is acknowledged (studies completed early are forwarded meanwhile), and from
# there until the last study is completed.
PHASES = (("start", "signal"), ("signal", "chunks"), ("chunks", "end"), ("start", "end"))
PHASE_NAMES = ("sign-in", "upload", "forwarding tail", "total")


@dataclass(frozen=True)
class Mark:
    """The clock, this process's CPU and the machine's busy CPU at a mark."""

    at: float
    client_cpu: float
    machine_busy: float


def mark_now() -> Mark:
    times = psutil.Process().cpu_times()
    return Mark(time.monotonic(), times.user + times.system, machine_busy_seconds())


@dataclass
class Run:
    clinics: int
    study: str
    link_mbit: float
    chunk_size: int
    nginx_buffers_chunks: bool
    results: list[ClinicResult]
    marks: dict[str, Mark]
    roles: list[tuple[str, list[float], int, int]]
    verified: int
    instances: int
    problems: list[str]
    access: AccessLog
    node_error_lines: dict[str, int]
    nginx_errors: Counter[str]
    upstream_names: dict[str, str]
    load_start: str
    load_end: str
    info: dict[str, str]
    code: str
    started: str

    @property
    def latencies(self) -> list[float]:
        return [c.seconds for r in self.results for c in r.chunks]

    @property
    def errors(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for result in self.results:
            total.update(result.errors)
        return total

    @property
    def failed(self) -> list[ClinicResult]:
        return [r for r in self.results if r.final_state != "completed"]

    @property
    def total_bytes(self) -> int:
        return sum(r.bytes for r in self.results)

    def seconds(self, start: str, end: str) -> float:
        return self.marks[end].at - self.marks[start].at

    def client_cpu(self, start: str, end: str) -> float:
        return self.marks[end].client_cpu - self.marks[start].client_cpu

    def busy(self, start: str, end: str) -> float:
        return self.marks[end].machine_busy - self.marks[start].machine_busy


def run_clinics(clinics: list[Clinic], sampler: ProcessSampler) -> dict[str, Mark]:
    """Sign every clinic in at once, then start every upload at once, until every study
    is completed (or failed); the marks start, signal, chunks (the last chunk of the last
    clinic acknowledged) and end."""
    marks: dict[str, Mark] = {}
    sampler.start()
    marks["start"] = mark_now()

    def guarded(clinic: Clinic, step: str) -> None:
        try:
            if step == "sign_in":
                clinic.sign_in()
            else:
                clinic.upload_study()
        except Exception as exc:  # noqa: BLE001 (recorded; the other clinics go on)
            clinic.result.failure = clinic.result.failure or f"{step}: {exc}"
            clinic.result.final_state = clinic.result.final_state or "error"

    with ThreadPoolExecutor(max_workers=len(clinics)) as pool:
        list(pool.map(lambda c: guarded(c, "sign_in"), clinics))
    signed_in = [c for c in clinics if c.access]
    lock = threading.Lock()
    waiting = {"clinics": len(signed_in)}

    def chunks_done() -> None:
        with lock:
            waiting["clinics"] -= 1
            last = waiting["clinics"] == 0
        if last:
            sampler.mark("chunks")
            marks["chunks"] = mark_now()

    for clinic in signed_in:
        clinic.on_chunks_done = chunks_done
    sampler.mark("signal")
    marks["signal"] = mark_now()
    with ThreadPoolExecutor(max_workers=max(1, len(signed_in))) as pool:
        list(pool.map(lambda c: guarded(c, "upload"), signed_in))
    sampler.stop()
    marks["end"] = mark_now()
    if "chunks" not in marks:
        sampler.mark("chunks")
        marks["chunks"] = marks["end"]
    return marks


def measure(args: argparse.Namespace, work: Path) -> Run:
    info = machine.machine_info()
    started = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_start = load_average()
    count = QUICK_CLINICS if args.quick else args.clinics
    study_bytes = QUICK_STUDY_BYTES if args.quick else int(args.study_mb * 1e6)
    instances = max(1, math.ceil(study_bytes / INSTANCE_FILE_BYTES))
    print(f"Writing {count} studies of {instances} instances ...", flush=True)
    made = [
        studies.make_study(
            work / "studies" / f"clinic{n:02d}", instances=instances, instance_bytes=INSTANCE_BYTES
        )
        for n in range(1, count + 1)
    ]
    # The database is dropped only after every process using it has stopped.
    with fresh_database(args.database_url) as database_url, ExitStack() as stack:
        orthanc = servers.start_orthanc(stack, work / "orthanc", name="LOAD")
        queue = f"relaypacs-load-{uuid.uuid4().hex[:8]}"
        secret_key = "bench-load-" + secrets.token_hex(32)
        nodes = []
        # One after the other: the first migrates the new database, the second waits.
        for name in ("node A", "node B"):
            print(f"Starting {name} ...", flush=True)
            nodes.append(
                start_node(
                    stack,
                    work / name.replace(" ", "-"),
                    name=name,
                    orthanc=orthanc,
                    database_url=database_url,
                    redis_url=args.redis_url,
                    shared=work / "shared",
                    queue=queue,
                    secret_key=secret_key,
                )
            )
        proxy = start_nginx(
            stack,
            work / "nginx",
            upstreams=[n.port for n in nodes],
            buffer_chunks=args.nginx_buffers_chunks,
        )
        usernames = create_clinics(nodes[0].env, count)
        endpoint = Endpoint("127.0.0.1", proxy.https_port, proxy.cert)
        clinics = [
            Clinic(
                number=n,
                endpoint=endpoint,
                source=client_address(n),
                username=username,
                password=PASSWORD,
                paths=study.paths,
                link_bytes_per_second=args.link_mbit * 1e6 / 8,
                chunk_size=args.chunk_kib * 1024,
            )
            for n, (username, study) in enumerate(zip(usernames, made, strict=True), start=1)
        ]
        sampler = ProcessSampler(
            roots={
                **{n.name: n.process.pid for n in nodes},
                "nginx": proxy.pid,
                "Orthanc": orthanc.pid,
            },
            database=database_url.rsplit("/", 1)[1],
        )
        link = f" over links of {args.link_mbit:g} Mbit/s" if args.link_mbit else ""
        print(
            f"{count} clinics sign in, then upload {study_bytes / 1e6:.0f} MB each{link} ...",
            flush=True,
        )
        marks = run_clinics(clinics, sampler)
        results = [c.result for c in clinics]
        print("Checking every instance in Orthanc ...", flush=True)
        with ThreadPoolExecutor(max_workers=VERIFY_THREADS) as pool:
            checks = list(pool.map(lambda s: verify_in_orthanc(orthanc, s), made))
        problems = [
            f"clinic {n}: {p}" for n, (_, found) in enumerate(checks, start=1) for p in found
        ]
        return Run(
            clinics=count,
            study=f"{made[0].size / 1e6:.1f} MB ({instances} instances of {made[0].paths[0].stat().st_size / 1e6:.2f} MB)",
            link_mbit=args.link_mbit,
            nginx_buffers_chunks=args.nginx_buffers_chunks,
            chunk_size=args.chunk_kib * 1024,
            results=results,
            marks=marks,
            roles=sampler.by_role(PHASES),
            verified=sum(identical for identical, _ in checks),
            instances=sum(len(s.paths) for s in made),
            problems=problems,
            access=read_access_log(proxy.access_log),
            node_error_lines={n.name: error_lines(n.log) for n in nodes},
            nginx_errors=nginx_errors(proxy.error_log),
            upstream_names={f"127.0.0.1:{n.port}": n.name for n in nodes},
            load_start=load_start,
            load_end=load_average(),
            info=info,
            code=machine.code_version(REPO),
            started=started,
        )


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _is_web(role: str) -> bool:
    return "uvicorn" in role or "granian" in role or "gunicorn" in role


def report(run: Run) -> str:
    latencies = run.latencies
    p50, p95 = percentile(latencies, 0.50), percentile(latencies, 0.95)
    errors = run.errors
    error_count = sum(errors.values())
    completed = run.clinics - len(run.failed)
    identical = run.verified == run.instances and not run.problems and not run.failed
    cores = int(run.info["nproc"])
    info = run.info
    upload_seconds = run.seconds("signal", "chunks")
    total_seconds = run.seconds("start", "end")
    statuses = ", ".join(f"{s}: {n}" for s, n in sorted(run.access.statuses.items()))
    by_upstream = ", ".join(
        f"{run.upstream_names.get(u, u)} {n}"
        for u, n in sorted(run.access.chunks_by_upstream.items())
    )

    def outside(start: str, end: str, column: int) -> float:
        ours = sum(cpu[column] for _, cpu, _, _ in run.roles) + run.client_cpu(start, end)
        return max(0.0, run.busy(start, end) - ours)

    upload_outside = outside("signal", "chunks", 1)
    web_upload_cpu = sum(cpu[1] for role, cpu, _, _ in run.roles if _is_web(role))
    link = (
        f"each clinic's link delivering a chunk every {run.chunk_size * 8 / (run.link_mbit * 1e6):.2f} s "
        f"({run.link_mbit:g} Mbit/s; chunks then go at loopback speed, so the latency is the "
        "server's answer time)"
        if run.link_mbit
        else "no link limit (each clinic sends as fast as the server answers)"
    )
    completions = [r.complete_to_completed for r in run.results if r.complete_to_completed]
    options = (
        (f" --link-mbit {run.link_mbit:g}" if run.link_mbit else "")
        + (f" --chunk-kib {run.chunk_size // 1024}" if run.chunk_size != CHUNK_SIZE else "")
        + (" --nginx-buffers-chunks" if run.nginx_buffers_chunks else "")
    )
    title = f"links of {run.link_mbit:g} Mbit/s" if run.link_mbit else "no link limit"
    if run.chunk_size != CHUNK_SIZE:
        title += f", chunks of {run.chunk_size // 1024} KiB"
    if run.nginx_buffers_chunks:
        title += ", variant: nginx buffers each chunk in memory"
    lines = [
        f"## {run.clinics} clinics at once (issue 17), run of {run.started}, {title}",
        "",
        f"`bench/load_clinics.py{options}`: "
        f"{run.clinics} clinics, each with its own facility, user and loopback address, sign in at "
        f"once, then all upload a {run.study} study at once over HTTPS (HTTP/1.1 "
        "keep-alive) through nginx (`deploy/nginx/relaypacs.conf` "
        + (
            "with `proxy_request_buffering on; client_body_buffer_size 16m;` for chunks"
            if run.nginx_buffers_chunks
            else "as shipped"
        )
        + ", `worker_processes auto`) to two `manage.py serve` nodes (production settings; one "
        "web process and one worker of concurrency 1 each) on one PostgreSQL database, one "
        "Redis database and one Orthanc. The PWA's client: "
        f"{run.chunk_size // 1024} KiB chunks with MD5, one chunk in flight first, then up to 3, adapted as the "
        "PWA does (to the link and to a busy node's `max_in_flight`), its "
        f"retries and backoff, status every 1.5 s after complete until `completed`; {link}.",
        "",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram']} RAM, kernel "
        f"{info['kernel']}, Python {info['python']}. Code measured: {run.code}. "
        f"Load average (1/5/15 min) at start {run.load_start}, at end {run.load_end}. "
        f"Processes this bench neither started nor measured (other helpers' work; Redis) "
        f"used {upload_outside:.0f} of the {cores * upload_seconds:.0f} CPU-seconds of the "
        f"upload phase ({100 * upload_outside / max(1e-9, cores * upload_seconds):.0f}%) and "
        f"{outside('start', 'end', 3):.0f} of {cores * total_seconds:.0f} in the whole run.",
        "",
        "| Figure | Value | Goal | |",
        "|---|---|---|---|",
        f"| Errors (non-2xx answers and connection errors, retried ones too) | {error_count}"
        f"{' (' + ', '.join(f'{k}: {v}' for k, v in errors.most_common()) + ')' if errors else ''} "
        f"| 0 | {_met(error_count == 0)} |",
        f"| Chunk PUT latency at the client, p50 | {p50 * 1000:.0f} ms | | |",
        f"| **Chunk PUT latency at the client, p95** | **{p95 * 1000:.0f} ms** | < {GOAL_P95_SECONDS * 1000:.0f} ms | {_met(p95 < GOAL_P95_SECONDS)} |",
        f"| Chunk PUT latency, mean; chunks in flight on average over all clinics (chunks/s x mean latency) | {statistics.fmean(latencies or [0]) * 1000:.0f} ms; {len(latencies) / max(1e-9, upload_seconds) * statistics.fmean(latencies or [0]):.0f} | | |",
        f"| Chunk PUT latency, p99 / max ({len(latencies)} chunks) | {percentile(latencies, 0.99) * 1000:.0f} / {max(latencies, default=0) * 1000:.0f} ms | | |",
        f"| Studies completed; instances byte-identical in Orthanc (SHA-256 of `/instances/{{id}}/file`) | {completed} of {run.clinics}; {run.verified} of {run.instances} | all | {_met(identical)} |",
        f"| Sign-in of every clinic at once (bcrypt) | {run.seconds('start', 'signal'):.1f} s | | |",
        f"| Start signal -> last chunk acknowledged | {upload_seconds:.1f} s: {run.total_bytes / 1e6 / max(1e-9, upload_seconds):.0f} MB/s, {len(latencies) / max(1e-9, upload_seconds):.0f} chunks/s | | |",
        f"| Start signal -> last study completed | {run.seconds('signal', 'end'):.1f} s ({run.total_bytes / 1e6:.0f} MB) | | |",
        f"| complete -> completed per study, p50 / max | {statistics.median(completions or [0]):.1f} / {max(completions, default=0):.1f} s | | |",
        f"| Chunks in flight per clinic (the PWA starts at 1, steps up to 3, goes to 2 above 1.5 s per chunk, and to 1 for 10 s when a busy node's answer says `max_in_flight: 1`) | lowest {min((r.min_in_flight_seen for r in run.results), default=0)}, highest {max((r.max_in_flight_seen for r in run.results), default=0)} | | |",
        f"| Chunk answers with `max_in_flight: 1` (the node's chunk waited > UPLOAD_CHUNK_BUSY_SECONDS for a thread behind at least 4 waiting chunks) | {sum(r.advised_chunks for r in run.results)} of {sum(len(r.chunks) for r in run.results)} | | |",
        f"| Web processes' CPU per chunk in the upload phase (all their requests) | {1000 * web_upload_cpu / max(1, len(latencies)):.1f} ms | | |",
        "",
        f"nginx's log: chunk PUTs by web process: {by_upstream or 'none'}; all answers by "
        f"status: {statuses or 'none'}; chunk `request_time` p95 "
        f"{percentile(run.access.chunk_request_times, 0.95) * 1000:.0f} ms. Lines at "
        "ERROR or with a traceback in the nodes' logs: "
        + ", ".join(f"{n} {c}" for n, c in run.node_error_lines.items())
        + ". nginx's error log: "
        + (
            "; ".join(f"{n} x {m}" for m, n in run.nginx_errors.most_common())
            if run.nginx_errors
            else "no errors"
        )
        + ".",
        "",
        f"CPU seconds by process and phase (sign-in {run.seconds('start', 'signal'):.0f} s, "
        f"upload {upload_seconds:.0f} s, forwarding tail {run.seconds('chunks', 'end'):.0f} s "
        f"of wall time; {cores} cores), and peak RSS of one process:",
        "",
        "| Process | " + " | ".join(PHASE_NAMES) + " | peak RSS | processes |",
        "|---|" + "---|" * len(PHASE_NAMES) + "---|---|",
    ]
    for role, cpu, rss, count in run.roles:
        if max(cpu) < 0.05 and rss < 1e6:
            continue
        cells = " | ".join(f"{c:.1f}" for c in cpu)
        lines.append(f"| {role} | {cells} | {rss / 1e6:.0f} MB | {count} |")
    client = " | ".join(f"{run.client_cpu(a, b):.1f}" for a, b in PHASES)
    lines.append(
        f"| the client (this bench's process, {run.clinics} x 4 threads) | {client} | "
        f"{psutil.Process().memory_info().rss / 1e6:.0f} MB | 1 |"
    )
    machine_row = " | ".join(f"{run.busy(a, b):.1f}" for a, b in PHASES)
    lines.append(f"| the whole machine (every process) | {machine_row} | | |")
    if run.failed:
        lines += ["", "Clinics that did not complete:"]
        lines += [f"- clinic {r.clinic}: {r.failure or r.final_state}" for r in run.failed[:10]]
    if run.problems:
        lines += ["", "Differences found in Orthanc:"]
        lines += [f"- {p}" for p in run.problems[:10]]
    return "\n".join(lines) + "\n"


def record(section: str) -> None:
    with open(RESULTS, "a") as handle:
        handle.write("\n" + section)


def _raise_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every started process is stopped."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5 clinics of 2 MB, not recorded")
    parser.add_argument("--clinics", type=int, default=CLINICS)
    parser.add_argument("--study-mb", type=float, default=STUDY_BYTES / 1e6)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_LOAD_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="a PostgreSQL database this bench may drop and create (default: %(default)s)",
    )
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument(
        "--link-mbit",
        type=float,
        default=0.0,
        help="each clinic's link rate: chunks start no faster than it delivers them (0: no limit)",
    )
    parser.add_argument(
        "--chunk-kib",
        type=int,
        default=CHUNK_SIZE // 1024,
        help="chunk size (default: the PWA's when it knows nothing of the link, %(default)s)",
    )
    parser.add_argument(
        "--nginx-buffers-chunks",
        action="store_true",
        help="variant: nginx buffers each chunk in memory before passing it on",
    )
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--keep-temp", action="store_true")
    args = parser.parse_args(argv)
    if args.clinics > 250 * 10:
        parser.error("at most 2500 clinics (one loopback address each)")
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    work = Path(tempfile.mkdtemp(prefix="relaypacs-load-"))
    try:
        run = measure(args, work)
    finally:
        if args.keep_temp:
            print(f"Kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    section = report(run)
    print(section)
    if not (args.quick or args.no_record):
        record(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
