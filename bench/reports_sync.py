"""Benchmark of the report synchronisation (issue #10): with 10,000 open reports, the
requests one sync cycle sends to the PACS and the time it takes.

A real Orthanc holds one small image of each of the 10,000 studies, and in 100 of them a
report object as a hospital's reporting system would store it (final and preliminary SRs
of the three SR classes, encapsulated PDFs), plus dose SRs and Key Object Selections in
20 more (never reports). A counting HTTP proxy in front of Orthanc counts what the
cycle sends by kind (QIDO-RS, WADO-RS, other). One cycle runs the beat task's code
(``reports.tasks.reports_sync_task``) in this process; the PDFs it queues for final SRs
are then rendered here as a worker would (timed apart: not part of the cycle); a second
cycle runs with nothing new.

The database is fresh: SQLite in a temporary DATA_DIR (the embedded default of
``make run``), or, when DATABASE_URL names a PostgreSQL database, a new database
``<name>_reports_bench`` on that server, dropped at the end. Everything runs on
127.0.0.1 in a temporary directory that is removed at the end; every process started
here is stopped, also on an error, Ctrl-C or SIGTERM.

Usage: ``.venv/bin/python bench/reports_sync.py [--reports N] [--no-record]
[--section-out FILE] [--keep-temp]``; ``make bench`` runs it from bench/run_all.py.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import machine, servers  # noqa: E402
from bench.usage import CpuMeter, machine_busy_seconds  # noqa: E402

RESULTS = REPO / "bench" / "RESULTS.md"
# The goal of issue #10: a few hundred requests per cycle, well within the cycle.
OPEN_REPORTS = 10_000
GOAL_REQUESTS = 500  # "a few hundred"
REPORT_SYNC_SECONDS = 300  # the default cycle (settings.REPORT_SYNC_SECONDS)
# Of the open reports' studies, this many get a report object in the PACS, in these
# shares: final SRs (one in each SR class in turn), preliminary SRs, encapsulated PDFs.
WITH_REPORT_OBJECT = 100
MIX = {"final_sr": 0.4, "preliminary_sr": 0.4, "pdf": 0.2}
# Studies that get only objects that are never reports (a dose SR, a Key Object Selection).
WITH_OTHER_OBJECT = 20
# Open reports by status: most wait on the worklist, some are being read or wait for the
# sender's answer.
STATUS_MIX = {"assigned": 0.8, "pending": 0.15, "additional_data_required": 0.05}
# Instances stored into Orthanc at once: Orthanc writes its index one instance at a time,
# two in flight keep it busy on two cores.
STORE_IN_FLIGHT = 2
# For a third cycle, the studies of the first QIDO-RS batch get this many more images each
# (5,000 in all): how the PACS's answer time grows with the instances of the asked studies
# (real studies hold tens to thousands of instances; 10,000 such studies do not fit here).
EXTRA_IMAGES_PER_STUDY = 50
# QIDO-RS of that batch sent straight to Orthanc this many times each way (the median counts).
PROBE_REPEATS = 3
# Each cycle must finish well within this, or the benchmark stops (a hung PACS, a bug).
CYCLE_TIMEOUT_SECONDS = 600
BENCH_DB_SUFFIX = "_reports_bench"
COUNTS_PATH = "/__bench__/counts"

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
# A minimal one-page PDF, as a reporting system's PDF would start; the sync keeps it as is.
MINIMAL_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 595 842]>>endobj\n"
    b"trailer<</Root 1 0 R>>\n%%EOF\n"
)


def log(message: str) -> None:
    print(f"[reports-sync {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- The counting proxy (a child process) ---------------------------------------------

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
    }
)
_SEARCH_RESOURCES = frozenset({"studies", "series", "instances"})


def request_kind(method: str, path: str) -> str:
    """QIDO (a DICOMweb search), WADO (a DICOMweb retrieve) or other (STOW-RS, REST)."""
    parts = [p for p in urllib.parse.urlsplit(path).path.split("/") if p]
    if method != "GET" or not parts or parts[0] != "dicom-web" or len(parts) < 2:
        return "other"
    return "QIDO" if parts[-1] in _SEARCH_RESOURCES else "WADO"


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.seconds: dict[str, float] = defaultdict(float)  # waiting for Orthanc's answers

    def snapshot(self, *, reset: bool) -> dict[str, dict[str, float]]:
        with self.lock:
            data: dict[str, dict[str, float]] = {
                "requests": dict(self.requests),
                "bytes": dict(self.bytes),
                "seconds": dict(self.seconds),
            }
            if reset:
                self.requests.clear()
                self.bytes.clear()
                self.seconds.clear()
        return data


def _handler(upstream: tuple[str, int], counts: _Counts) -> type[BaseHTTPRequestHandler]:
    class Proxy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the sync's session uses it
        _upstream: http.client.HTTPConnection | None = None

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _forward(self) -> None:
            if self.path.startswith(COUNTS_PATH):
                reset = "reset=1" in self.path
                body = json.dumps(counts.snapshot(reset=reset)).encode()
                self._reply(200, [("Content-Type", "application/json")], body)
                return
            length = int(self.headers.get("Content-Length") or 0)
            payload = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(*upstream, timeout=120)
            started = time.perf_counter()
            self._upstream.request(self.command, self.path, body=payload, headers=headers)
            response = self._upstream.getresponse()
            body = response.read()
            waited = time.perf_counter() - started
            kind = request_kind(self.command, self.path)
            with counts.lock:
                counts.requests[kind] += 1
                counts.bytes[kind] += len(body)
                counts.seconds[kind] += waited
            self._reply(response.status, response.getheaders(), body)

        do_GET = do_POST = do_PUT = do_DELETE = _forward

    return Proxy


def run_proxy(*, upstream_port: int, port: int) -> None:
    """Serve the counting proxy on 127.0.0.1:``port`` until SIGTERM."""
    counts = _Counts()
    server = ThreadingHTTPServer(
        ("127.0.0.1", port), _handler(("127.0.0.1", upstream_port), counts)
    )
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()


@dataclass(frozen=True)
class CountingProxy:
    url: str
    pid: int

    def counts(self, *, reset: bool = False) -> dict[str, dict[str, float]]:
        suffix = "?reset=1" if reset else ""
        response = requests.get(f"{self.url}{COUNTS_PATH}{suffix}", timeout=10)
        response.raise_for_status()
        data: dict[str, dict[str, float]] = response.json()
        return data


def start_proxy(stack: ExitStack, directory: Path, orthanc: servers.Orthanc) -> CountingProxy:
    (port,) = servers.free_ports(1)
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "proxy.log"
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--proxy-upstream-port",
        str(orthanc.http_port),
        "--proxy-port",
        str(port),
    ]
    with open(log_path, "wb") as out:
        process = subprocess.Popen(
            argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    stack.callback(servers.stop_process, process, own_group=True)
    proxy = CountingProxy(url=f"http://127.0.0.1:{port}", pid=process.pid)
    servers.wait_until(
        lambda: bool(proxy.counts() is not None), what="proxy", process=process, log=log_path
    )
    return proxy


# --- The database ----------------------------------------------------------------------


def fresh_database(stack: ExitStack, data_dir: Path) -> str:
    """The DATABASE_URL to use: a new PostgreSQL database next to DATABASE_URL's (dropped
    when ``stack`` closes), or SQLite in ``data_dir`` (the embedded default)."""
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        return f"sqlite:///{data_dir / 'relaypacs.sqlite3'}"
    import psycopg

    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/") + BENCH_DB_SUFFIX

    # CREATE and DROP DATABASE from the server's maintenance database: DATABASE_URL's own
    # database need not exist (the test suite uses test_<name>).
    maintenance = urllib.parse.urlunsplit(parts._replace(path="/postgres"))

    def execute(sql: str) -> None:
        with psycopg.connect(maintenance, autocommit=True) as connection:
            connection.execute(sql)

    execute(f'DROP DATABASE IF EXISTS "{name}"')  # left by an interrupted run of this bench
    execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        from django.db import connections

        connections.close_all()
        execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    stack.callback(drop)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def setup_django(*, data_dir: Path, database_url: str, proxy: CountingProxy, orthanc: Any) -> None:
    """Django as ``make run`` configures it, on ``database_url``, with the PACS behind the
    proxy; the embedded (file) broker in ``data_dir``, so queued tasks stay there."""
    for name in servers.FOREIGN_ENV + servers.DEFAULTED_ENV:
        os.environ.pop(name, None)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="relaypacs.settings.dev",
        DATA_DIR=str(data_dir),
        DATABASE_URL=database_url,
        PACS_DICOMWEB_URL=f"{proxy.url}/dicom-web",
        PACS_ORTHANC_URL=proxy.url,
        PACS_USERNAME=orthanc.username,
        PACS_PASSWORD=orthanc.password,
        REPORT_STORAGE_DIR=str(data_dir / "reports"),
        LOG_LEVEL="WARNING",
    )
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)


# --- What the PACS and the database hold -----------------------------------------------


@dataclass
class Plan:
    """The studies of the open reports and what each gets in the PACS."""

    study_uids: list[str]
    objects: dict[str, str]  # study UID -> final_sr / preliminary_sr / pdf / other


def make_plan(count: int, seed: int = 10) -> Plan:
    from pydicom.uid import generate_uid

    rng = random.Random(seed)
    study_uids = [str(generate_uid()) for _ in range(count)]
    with_objects = rng.sample(study_uids, min(count, WITH_REPORT_OBJECT + WITH_OTHER_OBJECT))
    report_count = min(len(with_objects), WITH_REPORT_OBJECT)
    kinds: list[str] = []
    for kind, share in MIX.items():
        kinds += [kind] * round(report_count * share)
    kinds = (kinds + ["final_sr"] * report_count)[:report_count]
    kinds += ["other"] * (len(with_objects) - report_count)
    return Plan(study_uids=study_uids, objects=dict(zip(with_objects, kinds, strict=True)))


def create_reports(plan: Plan) -> None:
    """One open report per study, by STATUS_MIX, in one facility, sent by one clinician."""
    from accounts.models import Facility, Role, User
    from reports.models import Report

    facility = Facility.objects.create(name="Bench clinic", code="bench-clinic")
    sender = User.objects.create_user(
        username="bench-sender", password=None, role=Role.CLINICIAN, facility=facility
    )
    statuses: list[str] = []
    for status, share in STATUS_MIX.items():
        statuses += [status] * round(len(plan.study_uids) * share)
    statuses = (statuses + ["assigned"] * len(plan.study_uids))[: len(plan.study_uids)]
    random.Random(11).shuffle(statuses)
    Report.objects.bulk_create(
        (
            Report(
                facility=facility,
                sender=sender,
                study_instance_uid=uid,
                status=status,
                modality="CT",
                study_description="Synthetic benchmark study",
            )
            for uid, status in zip(plan.study_uids, statuses, strict=True)
        ),
        batch_size=1000,
    )


def _dataset(sop_class: str, study_uid: str, modality: str) -> Any:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Synthetic^Bench", "RELAYPACS-BENCH", modality
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20250101", "120000", ""
    ds.InstanceNumber = 1
    return ds


def _code(meaning: str, value: str = "121071") -> Any:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, "DCM", meaning
    return Sequence([code])


def image(study_uid: str) -> Any:
    """A small CT image: the study as the clinic sent it."""
    ds = _dataset(CT_IMAGE, study_uid, "CT")
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = bytes(8 * 8 * 2)
    return ds


def text_sr(study_uid: str, *, sop_class: str, final: bool, text: str) -> Any:
    """An SR as a reporting system writes one: final (COMPLETE, VERIFIED) or a draft."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _dataset(sop_class, study_uid, "SR")
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = _code("Radiology Report", "18748-4")
    ds.CompletionFlag = "COMPLETE" if final else "PARTIAL"
    ds.VerificationFlag = "VERIFIED" if final else "UNVERIFIED"
    if final:
        observer = Dataset()
        observer.VerifyingObserverName = "Hospital^Radiologist"
        observer.VerifyingOrganization = "Hospital"
        observer.VerificationDateTime = "20250102120000"
        ds.VerifyingObserverSequence = Sequence([observer])
    items = []
    for meaning, value in (("Finding", text), ("Impression", "No acute abnormality.")):
        item = Dataset()
        item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", value
        item.ConceptNameCodeSequence = _code(meaning)
        items.append(item)
    ds.ContentSequence = Sequence(items)
    return ds


def encapsulated_pdf(study_uid: str) -> Any:
    ds = _dataset(ENCAPSULATED_PDF, study_uid, "DOC")
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(MINIMAL_PDF)
    ds.EncapsulatedDocument = MINIMAL_PDF + (b"\0" if len(MINIMAL_PDF) % 2 else b"")
    return ds


def pacs_objects(plan: Plan) -> Iterator[Any]:
    """Every instance the PACS holds: an image per study, then the planned objects."""
    sr_classes = (BASIC_TEXT_SR, ENHANCED_SR, COMPREHENSIVE_SR)
    for uid in plan.study_uids:
        yield image(uid)
    for number, (uid, kind) in enumerate(sorted(plan.objects.items())):
        text = f"Findings of benchmark study {number}: no fracture seen."
        if kind == "final_sr":
            yield text_sr(uid, sop_class=sr_classes[number % 3], final=True, text=text)
        elif kind == "preliminary_sr":
            yield text_sr(uid, sop_class=sr_classes[number % 3], final=False, text=text)
        elif kind == "pdf":
            yield encapsulated_pdf(uid)
        else:
            yield text_sr(uid, sop_class=DOSE_SR, final=True, text="Dose.")
            yield text_sr(uid, sop_class=KEY_OBJECT_SELECTION, final=True, text="Key images.")


def more_images(study_uids: list[str]) -> Iterator[Any]:
    """EXTRA_IMAGES_PER_STUDY more images in each of these studies, in a series of their own."""
    from pydicom.uid import generate_uid

    for uid in study_uids:
        series = generate_uid()
        for number in range(EXTRA_IMAGES_PER_STUDY):
            ds = image(uid)
            ds.SeriesInstanceUID, ds.InstanceNumber = series, number + 2
            yield ds


def store_all(orthanc: servers.Orthanc, datasets: Iterable[Any]) -> int:
    """POST every dataset to Orthanc's REST API (straight, not through the proxy)."""
    import pydicom

    local = threading.local()

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
            local.session.auth = (orthanc.username, orthanc.password)
        return local.session  # type: ignore[no-any-return]

    def store(ds: Any) -> None:
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        try:
            response = session().post(
                f"{orthanc.url}/instances", data=buffer.getvalue(), timeout=60
            )
        except requests.ConnectionError as error:
            # Two runs saw Orthanc close a kept-alive connection without an answer (its
            # process still running): once more on a new connection (storing twice keeps
            # one copy); a second failure, or a stopped Orthanc, ends the run.
            alive = os.path.exists(f"/proc/{orthanc.pid}") if orthanc.pid else True
            log(f"storing into Orthanc: {type(error).__name__}; Orthanc running: {alive}")
            local.session.close()
            del local.session
            response = session().post(
                f"{orthanc.url}/instances", data=buffer.getvalue(), timeout=60
            )
        response.raise_for_status()

    stored = 0
    with ThreadPoolExecutor(STORE_IN_FLIGHT) as pool:
        for _ in pool.map(store, datasets):
            stored += 1
    return stored


# --- One cycle ---------------------------------------------------------------------------


@dataclass
class Cycle:
    requests: dict[str, int]
    response_bytes: dict[str, float]
    pacs_seconds: float  # waiting for Orthanc's answers, as the proxy saw it
    machine_busy: float  # share of all CPUs busy during the cycle, every process included
    wall: float
    cpu: float  # this process: the beat task's code, its database client, dicomweb-client
    orthanc_cpu: float
    proxy_cpu: float
    database_cpu: float | None  # the PostgreSQL backend serving this process, when known
    changed: int
    outcomes: dict[str, int]

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())


def _report_states() -> dict[int, tuple[Any, ...]]:
    from reports.models import Report

    return {
        row[0]: row[1:]
        for row in Report.objects.values_list("pk", "status", "findings", "source", "signing")
    }


def _database_backend_pid() -> int | None:
    from django.db import connection

    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def run_cycle(proxy: CountingProxy, orthanc: servers.Orthanc) -> Cycle:
    """One run of the beat task's code, as the worker runs it, measured."""
    from reports.models import PacsReportObject
    from reports.tasks import reports_sync_task

    before_states = _report_states()
    before_outcomes = Counter(PacsReportObject.objects.values_list("outcome", flat=True))
    backend = _database_backend_pid()
    roots = {
        "orthanc": orthanc.pid,
        "proxy": proxy.pid,
        **({"database": backend} if backend else {}),
    }
    proxy.counts(reset=True)
    busy_before = machine_busy_seconds()
    timer = threading.Timer(CYCLE_TIMEOUT_SECONDS, lambda: os.kill(os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        with CpuMeter(roots) as meter:
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            reports_sync_task.run()
            wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    finally:
        timer.cancel()
    busy = (machine_busy_seconds() - busy_before) / (wall * (os.cpu_count() or 1))
    counts = proxy.counts(reset=True)
    after_states = _report_states()
    outcomes = Counter(PacsReportObject.objects.values_list("outcome", flat=True))
    outcomes.subtract(before_outcomes)
    return Cycle(
        requests={kind: int(counts["requests"].get(kind, 0)) for kind in ("QIDO", "WADO", "other")},
        response_bytes=counts["bytes"],
        pacs_seconds=sum(counts["seconds"].values()),
        machine_busy=busy,
        wall=wall,
        cpu=cpu,
        orthanc_cpu=meter.seconds.get("orthanc", 0.0),
        proxy_cpu=meter.seconds.get("proxy", 0.0),
        database_cpu=meter.seconds.get("database") if backend else None,
        changed=sum(1 for pk, state in after_states.items() if before_states.get(pk) != state),
        outcomes={k: v for k, v in outcomes.items() if v},
    )


def render_queued() -> tuple[int, float]:
    """Render the PDFs the cycle queued for final SRs, here, as a worker would; (count,
    seconds). The queued broker messages stay unread in the temporary DATA_DIR."""
    from reports.models import ReportVersion
    from reports.services.pdf import report_version_render

    waiting = list(
        ReportVersion.objects.filter(pdf_path="")
        .exclude(source="pacs_pdf")
        .values_list("pk", flat=True)
    )
    started = time.perf_counter()
    for version_id in waiting:
        report_version_render(version_id=version_id)
    return len(waiting), time.perf_counter() - started


def qido_probe(orthanc: servers.Orthanc, study_uids: list[str], *, modality: bool) -> float:
    """Median seconds of the sync's QIDO-RS of report objects for these studies, sent
    straight to Orthanc; with ``modality`` also filtered on Modality SR or DOC (a series
    attribute Orthanc's database indexes)."""
    from reports.clients import REPORT_CLASSES

    params: dict[str, Any] = {
        "StudyInstanceUID": ",".join(study_uids),
        "SOPClassUID": ",".join(REPORT_CLASSES),
        "includefield": ["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"],
    }
    if modality:
        params["Modality"] = "SR,DOC"
    timings = []
    with requests.Session() as session:
        session.auth = (orthanc.username, orthanc.password)
        for _ in range(PROBE_REPEATS):
            started = time.perf_counter()
            response = session.get(
                f"{orthanc.dicomweb_url}/instances",
                params=params,
                headers={"Accept": "application/dicom+json"},
                timeout=120,
            )
            response.raise_for_status()
            timings.append(time.perf_counter() - started)
    return sorted(timings)[len(timings) // 2]


def orthanc_version(orthanc: servers.Orthanc) -> str:
    response = requests.get(
        f"{orthanc.url}/system", auth=(orthanc.username, orthanc.password), timeout=10
    )
    response.raise_for_status()
    return str(response.json().get("Version", "unknown"))


# --- Report ------------------------------------------------------------------------------


@dataclass
class Figures:
    machine: dict[str, str]
    code: str
    database: str = ""
    load_at_start: float = 0.0
    open_reports: int = 0
    studies: int = 0
    instances: int = 0
    store_seconds: float = 0.0
    planned: dict[str, int] = field(default_factory=dict)
    orthanc_version: str = ""
    first: Cycle | None = None
    second: Cycle | None = None
    third: Cycle | None = None  # after EXTRA_IMAGES_PER_STUDY more images in one batch
    extra_instances: int = 0
    first_batch_has_report: bool = False  # then it is asked twice per cycle (paging)
    # Median seconds of the first batch's QIDO-RS straight to Orthanc, before and after the
    # extra images, as the sync sends it and with Modality SR or DOC added.
    probe_before: float = 0.0
    probe_before_modality: float = 0.0
    probe_after: float = 0.0
    probe_after_modality: float = 0.0
    rendered: int = 0
    render_seconds: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    qido_batch: int = 0
    notes: list[str] = field(default_factory=list)


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _requests_text(cycle: Cycle) -> str:
    r = cycle.requests
    return f"{cycle.total_requests} (QIDO-RS {r['QIDO']}, WADO-RS {r['WADO']}, other {r['other']})"


def _cpu_text(cycle: Cycle) -> str:
    parts = [
        f"sync process {cycle.cpu:.1f} s",
        f"Orthanc {cycle.orthanc_cpu:.1f} s",
        f"proxy {cycle.proxy_cpu:.1f} s",
    ]
    if cycle.database_cpu is not None:
        parts.append(f"PostgreSQL backend {cycle.database_cpu:.1f} s")
    return ", ".join(parts)


def check(figures: Figures) -> None:
    """Notes for anything the cycles did that the planned mix does not explain."""
    first, second, third = figures.first, figures.second, figures.third
    assert first and second and third
    planned = figures.planned
    expected = {
        "final_sr": planned.get("final_sr", 0),
        "preliminary": planned.get("preliminary_sr", 0),
        "final_pdf": planned.get("pdf", 0),
    }
    got = {k: first.outcomes.get(k, 0) for k in expected}
    if got != expected or set(first.outcomes) - set(expected):
        figures.notes.append(f"**Unexpected outcomes** of the first cycle: {first.outcomes}.")
    if first.requests["WADO"] != sum(expected.values()):
        figures.notes.append(
            f"**{first.requests['WADO']} WADO-RS** for {sum(expected.values())} report objects."
        )
    for name, cycle in (("second", second), ("third", third)):
        if cycle.outcomes or cycle.requests["WADO"] or cycle.changed:
            figures.notes.append(f"**The {name} cycle took something in**: {cycle.outcomes}.")


def _per_instance_seconds(figures: Figures) -> float:
    """What each instance of the asked studies adds to one QIDO-RS query of report objects
    (from the first batch's queries straight to Orthanc, before and after its extra images)."""
    added = figures.probe_after - figures.probe_before
    return max(added, 0.0) / figures.extra_instances if figures.extra_instances else 0.0


def _scaling(figures: Figures) -> list[str]:
    """How the cycle's time grows with the instances of the studies asked about."""
    second, third = figures.second, figures.third
    assert second and third
    per_instance = _per_instance_seconds(figures)
    batch = figures.qido_batch
    batches = -(-figures.studies // batch)
    per_batch = second.requests["QIDO"] / batches
    asked = 2 if figures.first_batch_has_report else 1
    expected_added = (figures.probe_after - figures.probe_before) * asked
    lines = [
        f"Third cycle: the {batch} studies of the first QIDO-RS batch got "
        f"{EXTRA_IMAGES_PER_STUDY} more images each ({figures.extra_instances} instances)"
        + (
            "; that batch holds a report object, so it is asked twice per cycle (see above)"
            if figures.first_batch_has_report
            else ""
        )
        + f". Its QIDO-RS straight to Orthanc (median of {PROBE_REPEATS}): "
        f"{figures.probe_before:.2f} s before, {figures.probe_after:.2f} s after: "
        f"**{1000 * per_instance:.2f} ms per instance** of the asked studies, per query. "
        f"With Modality SR or DOC added to the query (an attribute Orthanc's database "
        f"indexes): {figures.probe_before_modality:.2f} s before, "
        f"{figures.probe_after_modality:.2f} s after. Orthanc {figures.orthanc_version} does "
        "not index SOP Class UID, so it reads the file of every instance of the asked studies "
        "to match it. The third cycle waited "
        f"{third.pacs_seconds - second.pacs_seconds:.1f} s longer for Orthanc than the "
        f"second (the queries above predict {expected_added:.1f} s; the difference is the "
        "noise of this shared machine).",
    ]
    if per_instance > 0:
        base = second.wall
        per_study_instance = per_instance * per_batch * figures.studies
        budget = (REPORT_SYNC_SECONDS - base) / per_study_instance
        estimates = ", ".join(
            f"{n} instances {base + per_study_instance * (n - 1):.0f} s" for n in (10, 100, 500)
        )
        lines.append(
            f"At that cost ({per_batch:.2f} queries per batch, as in the second cycle) a cycle "
            f"over {figures.studies} studies would take, with studies of {estimates}; it "
            f"outgrows REPORT_SYNC_SECONDS ({REPORT_SYNC_SECONDS} s) from about "
            f"**{1 + budget:.0f} instances per study** on average (an estimate from this run)."
        )
    return lines


def report(figures: Figures) -> str:
    """The figures as a Markdown section of bench/RESULTS.md."""
    m, first, second, third = figures.machine, figures.first, figures.second, figures.third
    assert first and second and third
    cycles = (first, second, third)
    planned = figures.planned
    batches = -(-figures.studies // figures.qido_batch)
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(figures.statuses.items()))
    well_within = REPORT_SYNC_SECONDS / 10

    def row(label: str, cells: list[str], goal: str = "", met: str = "") -> str:
        return f"| {label} | " + " | ".join(cells) + f" | {goal} | {met} |"

    def outcomes(cycle: Cycle) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(cycle.outcomes.items())) or "none"

    lines = [
        f"## Report synchronisation on {figures.database}, run of {m['date']} (issue #10)",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram']} RAM, kernel {m['kernel']}, "
        f"Python {m['python']}. Code measured: {figures.code}. Database: {figures.database}. "
        f"Load average at start {figures.load_at_start:.2f} (other work on this machine slows "
        "every figure below, the wall times most).",
        f"PACS: a fresh Orthanc {figures.orthanc_version} holding {figures.instances} instances "
        f"(stored in {figures.store_seconds:.0f} s): one small CT image in each of the "
        f"{figures.studies} studies of the open reports; report objects in "
        f"{sum(v for k, v in planned.items() if k != 'other')} of them "
        f"({planned.get('final_sr', 0)} final SRs, COMPLETE/VERIFIED, "
        f"{planned.get('preliminary_sr', 0)} preliminary SRs, PARTIAL/UNVERIFIED, Basic/"
        f"Enhanced/Comprehensive in turn; {planned.get('pdf', 0)} encapsulated PDFs); a dose "
        f"SR and a Key Object Selection in {planned.get('other', 0)} more. A cycle is "
        "`reports.tasks.reports_sync_task` run in the benchmark's process; requests are "
        "counted by an HTTP proxy in front of Orthanc (which adds its own latency to each).",
        "",
        "| Figure | First cycle | Second cycle (nothing new) "
        f"| Third cycle ({EXTRA_IMAGES_PER_STUDY} more images in {figures.qido_batch} studies) "
        "| Goal | |",
        "|---|---|---|---|---|---|",
        row(
            "Open reports (studies asked about)",
            [f"{figures.open_reports} ({figures.studies})"] * 3,
        ),
        row(
            "**Requests to the PACS**",
            [f"**{_requests_text(c)}**" for c in cycles],
            f"a few hundred (<= {GOAL_REQUESTS})",
            _met(max(c.total_requests for c in cycles) <= GOAL_REQUESTS),
        ),
        row(
            "**Wall time of the cycle**",
            [f"**{c.wall:.1f} s**" for c in cycles],
            f"well within {REPORT_SYNC_SECONDS} s (<= {well_within:.0f} s)",
            _met(max(c.wall for c in cycles) <= well_within),
        ),
        row("of which waiting for Orthanc's answers", [f"{c.pacs_seconds:.1f} s" for c in cycles]),
        row("CPU time (user+system)", [_cpu_text(c) for c in cycles]),
        row(
            "All CPUs of the machine busy (every process)",
            [f"{100 * c.machine_busy:.0f}%" for c in cycles],
        ),
        row(
            "Bytes of the PACS's answers",
            [f"{sum(c.response_bytes.values()) / 1e3:.0f} kB" for c in cycles],
        ),
        row("Reports changed", [str(c.changed) for c in cycles]),
        row("Objects taken in, by outcome", [outcomes(c) for c in cycles]),
        "",
        f"Why this many requests: the studies are asked about in {batches} QIDO-RS queries of "
        f"{figures.qido_batch} Study Instance UIDs (`QIDO_STUDY_BATCH`); dicomweb-client's "
        "`get_remaining=True` pages until it gets an empty answer, so each query that finds a "
        "report object costs one more (empty) request, in every cycle, also when the object "
        "was taken in before; each new report object costs one WADO-RS.",
        f"Final SRs are signed versions whose PDFs the worker renders after the cycle's "
        f"commits (not part of the cycle): {figures.rendered} PDFs took "
        f"{figures.render_seconds:.1f} s here, one after another. Statuses after the first "
        f"cycle and those renders: {statuses}.",
        "",
        *_scaling(figures),
    ]
    if figures.notes:
        lines += ["", *(f"- {note}" for note in figures.notes)]
    return "\n".join(lines) + "\n"


def record(section: str) -> None:
    with open(RESULTS, "a") as handle:
        handle.write("\n" + section)


def measure(stack: ExitStack, root: Path, figures: Figures, *, reports: int) -> None:
    log("starting Orthanc and the counting proxy")
    orthanc = servers.start_orthanc(stack, root / "orthanc", name="BENCH_REPORTS")
    proxy = start_proxy(stack, root / "proxy", orthanc)
    data_dir = root / "data"
    database_url = fresh_database(stack, data_dir)
    setup_django(data_dir=data_dir, database_url=database_url, proxy=proxy, orthanc=orthanc)
    from django.db import connection

    from reports.models import Report
    from reports.services.sync import QIDO_STUDY_BATCH

    figures.database = (
        "SQLite (the embedded default)" if connection.vendor == "sqlite" else "PostgreSQL"
    )
    figures.qido_batch = QIDO_STUDY_BATCH
    plan = make_plan(reports)
    figures.planned = dict(Counter(plan.objects.values()))
    log(f"creating {reports} open reports")
    create_reports(plan)
    log(f"storing {reports} images and {len(plan.objects)} studies' other objects into Orthanc")
    started = time.perf_counter()
    figures.instances = store_all(orthanc, pacs_objects(plan))
    figures.orthanc_version = orthanc_version(orthanc)
    figures.store_seconds = time.perf_counter() - started
    figures.open_reports = Report.objects.filter(status__in=list(STATUS_MIX)).count()
    figures.studies = len(set(plan.study_uids))
    log("first sync cycle")
    figures.first = run_cycle(proxy, orthanc)
    log(f"first cycle: {_requests_text(figures.first)} requests, {figures.first.wall:.1f} s")
    figures.rendered, figures.render_seconds = render_queued()
    figures.statuses = dict(Counter(Report.objects.values_list("status", flat=True)).most_common())
    log("second sync cycle (nothing new)")
    figures.second = run_cycle(proxy, orthanc)
    log(f"second cycle: {_requests_text(figures.second)} requests, {figures.second.wall:.1f} s")
    first_batch = sorted(set(plan.study_uids))[:QIDO_STUDY_BATCH]
    figures.first_batch_has_report = any(
        plan.objects.get(uid, "other") != "other" for uid in first_batch
    )
    figures.probe_before = qido_probe(orthanc, first_batch, modality=False)
    figures.probe_before_modality = qido_probe(orthanc, first_batch, modality=True)
    log(f"{EXTRA_IMAGES_PER_STUDY} more images in each study of the first batch, third cycle")
    figures.extra_instances = store_all(orthanc, more_images(first_batch))
    figures.third = run_cycle(proxy, orthanc)
    log(f"third cycle: {_requests_text(figures.third)} requests, {figures.third.wall:.1f} s")
    figures.probe_after = qido_probe(orthanc, first_batch, modality=False)
    figures.probe_after_modality = qido_probe(orthanc, first_batch, modality=True)
    check(figures)


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reports", type=int, default=OPEN_REPORTS, help="open reports")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--section-out", type=Path, help="also write the section to this file")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temporary directory")
    parser.add_argument("--proxy-upstream-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--proxy-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.proxy_port:
        run_proxy(upstream_port=args.proxy_upstream_port, port=args.proxy_port)
        return 0
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    figures = Figures(machine=machine.machine_info(), code=machine.code_version(REPO))
    figures.load_at_start = os.getloadavg()[0]
    with ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="relaypacs-bench-reports-", dir="/tmp"))
        if not args.keep_temp:
            stack.callback(shutil.rmtree, root, ignore_errors=True)
        log(f"working in {root}")
        measure(stack, root, figures, reports=args.reports)
        log("stopping Orthanc and the proxy, removing temporary files")
    section = report(figures)
    print()
    print(section)
    if args.section_out:
        args.section_out.write_text(section)
    if args.reports != OPEN_REPORTS:
        print(f"(--reports {args.reports}: not recorded)")
    elif not args.no_record:
        record(section)
        print(f"Appended to {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
