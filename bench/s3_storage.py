"""S3 upload storage against the local-disk path, in one run (issue 16's benchmark).

Two RelayPACS started as ``make run`` starts them (``manage.py serve``, embedded
database and broker, ``bench/servers.py``), each forwarding to its own fresh Orthanc
(DICOMweb), alike but for the storage of upload bytes: one on the local-disk default,
one with ``UPLOAD_STORAGE=s3`` on moto's S3 server (its own process, spoken to over
HTTP, its default 5 MiB multipart minimum, as ``uploads/tests/s3_server.py`` starts it).
Rounds alternate between the two in the order local, S3, S3, local, ... (a drift in
machine load hits both alike). A round uploads a fresh synthetic 1 GB study
(``bench/studies.py``) through the API as the PWA does (each file's SHA-256 in the
manifest, so processing checks every byte; 1 MiB chunks, the default, four in flight;
``bench/clients.py``), then calls ``complete`` and polls until ``completed``.
Round k of both modes sends the same study, each to its own Orthanc.

Measured per round:

(a) S3 requests by kind (PutObject, GetObject, HeadObject, ListObjectsV2, ...) during
    init, ingest, processing, forwarding and the clean-up after it, per chunk: counted
    at the S3 server from its request log (one line per request; a thread stamps each
    line as it appears, every 20 ms); processing ends at the worker's "processed" log
    line, forwarding with its last GET.
(b) CPU per chunk (user + system) of serve's processes (web, worker, beat) during the
    ingest of the study, and, in S3 mode, that of the S3 server (moto) apart.
(c) complete -> completed, with the part before the worker's "processed" line.
    Also the peak RSS of the web and worker processes in each mode (sampled every 0.1 s).

Not part of ``make test``. Everything runs in a temporary directory under /tmp that is
removed at the end; every process started here is stopped, also on an error or Ctrl-C.
The figures are printed and, without ``--quick`` or ``--no-record``, appended with the
machine and the load to ``bench/RESULTS.md``.

Usage: ``.venv/bin/python bench/s3_storage.py [--quick] [--rounds 2] [--instances 256]
[--no-record] [--keep-temp]``
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import clients, machine, servers, studies, timeline  # noqa: E402
from bench.usage import (  # noqa: E402
    CpuMeter,
    RssSampler,
    machine_busy_seconds,
    own_and_reaped_cpu_seconds,
    tree_cpu_seconds,
)

RESULTS = REPO / "bench" / "RESULTS.md"
MODES = ("local", "s3")
# --quick: a study of this many 4 MiB instances (about 50 MB), to check the bench itself.
QUICK_INSTANCES = 12
# How often the S3 server's request log is read: the precision of the phase boundaries.
LOG_POLL_SECONDS = 0.02
# The S3 server logs a request once it answers; after a phase, wait this long so that
# its last lines are read (and stamped) before the phase is closed.
LOG_SETTLE_SECONDS = 0.5
# After ``completed`` the worker deletes the upload's bytes, then logs the task as
# succeeded: seconds here.
CLEANUP_TIMEOUT_SECONDS = 120
# Pause after flushing dirty pages between phases (as run_all.py): the disk's cache and
# the processes that just finished a phase settle within a second here.
QUIESCE_SECONDS = 1.0
ENV_OF_STORAGE = (
    "UPLOAD_STORAGE",
    "S3_ENDPOINT_URL",
    "S3_BUCKET",
    "S3_REGION",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
)
PHASES = ("init", "ingest", "processing", "forwarding", "clean-up")


def log(message: str) -> None:
    """A progress line on stdout (the figures come at the end)."""
    print(f"[bench s3 {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- S3 requests, counted at the server -------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REQUEST = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d{3})')


def request_kind(method: str, target: str) -> str | None:
    """The S3 operation of one request line (``GET /bucket/key?...``), None for moto's
    own API (``/moto-api/``)."""
    path, _, query = target.partition("?")
    if path.startswith("/moto-api"):
        return None
    params = {part.split("=", 1)[0] for part in query.split("&") if part}
    on_key = "/" in path.strip("/")
    if method == "PUT":
        if not on_key:
            return "CreateBucket"
        return "UploadPart" if "partNumber" in params else "PutObject"
    if method == "GET":
        if on_key:
            return "ListParts" if "uploadId" in params else "GetObject"
        if "uploads" in params:
            return "ListMultipartUploads"
        return "ListObjectsV2" if "list-type" in params else "ListObjects"
    if method == "HEAD":
        return "HeadObject" if on_key else "HeadBucket"
    if method == "POST":
        if "delete" in params:
            return "DeleteObjects"
        if "uploads" in params:
            return "CreateMultipartUpload"
        return "CompleteMultipartUpload" if "uploadId" in params else "PostObject"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in params else "DeleteObject"
    return method


@dataclass(frozen=True)
class S3Request:
    """One request the S3 server answered: when the bench read its log line (epoch)."""

    at: float
    kind: str
    status: int


class S3RequestLog:
    """Follows the S3 server's request log in a thread, stamping each new line.

    The lines hold the method, the key (upload ids, chunk offsets, digests: no patient
    data) and the status. Use as a context manager; ``between(since, until)`` counts
    the requests whose lines were read in that interval.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.requests: list[S3Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="s3-request-log", daemon=True)

    def __enter__(self) -> S3RequestLog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with open(self.path, "rb") as handle:
            handle.seek(0, os.SEEK_END)  # the server's start-up and bucket are not counted
            pending = b""
            while not self._stop.wait(LOG_POLL_SECONDS):
                pending += handle.read()
                *lines, pending = pending.split(b"\n")
                now = time.time()
                parsed = [self._parse(line.decode(errors="replace"), now) for line in lines]
                with self._lock:
                    self.requests.extend(r for r in parsed if r is not None)

    @staticmethod
    def _parse(line: str, now: float) -> S3Request | None:
        match = _REQUEST.search(_ANSI.sub("", line))
        if match is None:
            return None
        kind = request_kind(match["method"], match["target"])
        return None if kind is None else S3Request(now, kind, int(match["status"]))

    def last(self, kind: str, since: float, until: float) -> float | None:
        """When the last request of ``kind`` in ``(since, until]`` was read, if any."""
        with self._lock:
            times = [r.at for r in self.requests if r.kind == kind and since < r.at <= until]
        return max(times, default=None)

    def between(self, since: float, until: float) -> Counter[str]:
        """Requests by kind read in ``(since, until]``; an answer of 400 or more also
        counts under ``"<kind> (HTTP <status>)"``."""
        with self._lock:
            chosen = [r for r in self.requests if since < r.at <= until]
        counted: Counter[str] = Counter(r.kind for r in chosen)
        counted.update(f"{r.kind} (HTTP {r.status})" for r in chosen if r.status >= 400)
        return counted


# --- serve's log ------------------------------------------------------------------------

_STAMP = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
_PROCESS_DONE = re.compile(
    rf"Task {re.escape(timeline.PROCESS_TASK)}\[[^\]]+\] (succeeded|failed|raised)"
)


def _serve_events(log_path: Path, since: float) -> Iterator[tuple[float, str]]:
    """(epoch seconds, line) of serve's timestamped log lines from ``since`` on."""
    for line in log_path.read_text(errors="replace").splitlines():
        stamp = _STAMP.match(line)
        if stamp:
            when = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if when >= since:
                yield when, line


def wait_task_done(log_path: Path, *, since: float) -> float:
    """When the processing task (which forwards and then deletes the upload's bytes)
    ended after ``since``, from serve's log; RuntimeError after CLEANUP_TIMEOUT_SECONDS."""
    deadline = time.monotonic() + CLEANUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        for when, line in _serve_events(log_path, since):
            if _PROCESS_DONE.search(line):
                if "succeeded" not in line:
                    raise RuntimeError(f"the processing task ended badly: {line[:300]}")
                return when
        time.sleep(0.2)
    raise RuntimeError(f"the processing task did not end within {CLEANUP_TIMEOUT_SECONDS}s")


# --- one round ----------------------------------------------------------------------------


@dataclass
class Round:
    """What one round of one mode measured."""

    mode: str
    chunks: int
    files: int
    ingest_seconds: float
    ingest_bytes: int
    serve_cpu: float  # CPU seconds of serve's process tree during ingest
    web_cpu: float  # ... of which the web server's processes
    s3_cpu: float  # CPU seconds of the S3 server during ingest (S3 mode)
    complete_seconds: float  # complete -> completed
    processing_seconds: float  # complete -> the worker's "processed" line
    forward_cpu: float  # CPU seconds of serve's tree during complete -> completed
    forward_s3_cpu: float  # ... of the S3 server
    upload_dir_bytes: int  # bytes under the relay's UPLOAD_STORAGE_DIR after ingest
    requests: dict[str, Counter[str]] = field(default_factory=dict)


@dataclass
class Relay:
    """One RelayPACS under test with its Orthanc, client and RSS sampler."""

    mode: str
    relay: servers.Relay
    pacs: servers.Orthanc
    client: clients.RelayClient
    sampler: RssSampler


def _quiesce() -> None:
    """Flush dirty pages so one phase's writes are not paid for by the next one."""
    os.sync()
    time.sleep(QUIESCE_SECONDS)


def _tree_bytes(directory: Path) -> int:
    """Bytes of the regular files under ``directory`` (0 when it does not exist)."""
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def _web_cpu(roles: dict[str, float]) -> float:
    return sum(seconds for role, seconds in roles.items() if "uvicorn" in role)


def run_round(
    target: Relay, study: studies.Study, s3_pid: int, s3_log: S3RequestLog | None
) -> Round:
    """Ingest ``study`` into ``target``, then complete -> completed; see the module docstring."""
    client, relay = target.client, target.relay
    init_start = time.time()
    upload = client.init(study.paths, sha256=True)
    chunks = int(upload["total_chunks"])
    roots = {"serve": relay.process.pid, "s3": s3_pid}
    _quiesce()
    ingest_start = time.time()
    with target.sampler.phase("ingest"), CpuMeter(roots) as ingest_meter:
        transfer = client.send_chunks(upload, study.paths)
    time.sleep(LOG_SETTLE_SECONDS)
    upload_dir = Path(relay.env["DATA_DIR"]) / "uploads"
    upload_dir_bytes = _tree_bytes(upload_dir)
    _quiesce()
    with target.sampler.phase("forward"), CpuMeter(roots) as forward_meter:
        forwarded = client.complete_and_wait(upload)
    steps = timeline.forward_steps(
        relay.log, completed_posted=forwarded.posted_at, completed_seen=forwarded.completed_at
    )
    if len(steps) < 2:
        raise RuntimeError(f"serve's log {relay.log} lacks the processing task's lines")
    processed_at = forwarded.posted_at + steps[0].seconds + steps[1].seconds
    done_at = wait_task_done(relay.log, since=forwarded.posted_at)
    time.sleep(LOG_SETTLE_SECONDS)
    listed = servers.orthanc_instance_count(target.pacs, study.study_uid)
    if listed != len(study.paths):
        raise RuntimeError(f"Orthanc lists {listed} of {len(study.paths)} instances")
    requests: dict[str, Counter[str]] = {}
    if s3_log is not None:
        # The clean-up runs in the same task after "completed" is set: it ends with the
        # task's "succeeded" line, plus the time the last lines take to be read.
        cleanup_end = max(done_at, forwarded.completed_at) + LOG_SETTLE_SECONDS
        forwarding_end = s3_log.last("GetObject", processed_at, cleanup_end) or processed_at
        # Requests between the ingest and complete (none expected) count as ingest.
        requests = {
            "init": s3_log.between(init_start, ingest_start),
            "ingest": s3_log.between(ingest_start, forwarded.posted_at),
            "processing": s3_log.between(forwarded.posted_at, processed_at),
            # Forwarding ends with its last read; the deletion that follows (once the
            # upload is completed, often before the client's next poll sees it) is
            # the clean-up.
            "forwarding": s3_log.between(processed_at, forwarding_end),
            "clean-up": s3_log.between(forwarding_end, cleanup_end),
        }
    return Round(
        mode=target.mode,
        chunks=chunks,
        files=len(study.paths),
        ingest_seconds=transfer.seconds,
        ingest_bytes=transfer.bytes,
        serve_cpu=ingest_meter.seconds["serve"],
        web_cpu=_web_cpu(ingest_meter.roles),
        s3_cpu=ingest_meter.seconds["s3"],
        complete_seconds=forwarded.seconds,
        processing_seconds=processed_at - forwarded.posted_at,
        forward_cpu=forward_meter.seconds["serve"],
        forward_s3_cpu=forward_meter.seconds["s3"],
        upload_dir_bytes=upload_dir_bytes,
        requests=requests,
    )


# --- the run ------------------------------------------------------------------------------


@dataclass
class Figures:
    """Everything one run measured."""

    machine: dict[str, str]
    code: str
    uptime_start: str
    uptime_end: str = ""
    study: str = ""
    rounds: list[Round] = field(default_factory=list)
    rss: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # mode, phase, role
    elapsed: float = 0.0
    other_cpu: float = 0.0
    s3_closes: bool = False  # the S3 server closes the connection after each answer
    # Read at the end of the rounds, before the servers stop: the machine's busy CPU
    # seconds, and those of this process, its reaped children and the live servers.
    busy_at_end: float = 0.0
    ours_at_end: float = 0.0

    def of(self, mode: str) -> list[Round]:
        return [r for r in self.rounds if r.mode == mode]


def _uptime() -> str:
    result = subprocess.run(["uptime"], capture_output=True, text=True, check=False)
    return result.stdout.strip()


def measure(stack: ExitStack, root: Path, figures: Figures, *, instances: int, rounds: int) -> None:
    """Start the servers, make the studies and run the rounds into ``figures``."""
    from uploads.tests.s3_server import start_s3_server

    log("starting the S3 server (moto), two Orthancs and two RelayPACS")
    (root / "s3").mkdir()
    s3 = start_s3_server(root / "s3")
    stack.callback(s3.stop)
    answer = s3.client().head_bucket(Bucket=s3.bucket)  # before the counting starts
    figures.s3_closes = answer["ResponseMetadata"]["HTTPHeaders"].get("connection") == "close"
    s3_log = stack.enter_context(S3RequestLog(s3.log_path))
    targets: dict[str, Relay] = {}
    for mode in MODES:
        pacs = servers.start_orthanc(stack, root / f"orthanc-{mode}", name=f"BENCH_{mode.upper()}")
        extra = s3.env() if mode == "s3" else {}
        # mypy takes the keys of ``extra`` for possible positional parameters.
        relay = servers.start_relay(stack, root / f"relay-{mode}", pacs, **extra)  # type: ignore[arg-type]
        client = clients.RelayClient(
            relay.base, relay.port, servers.BENCH_USERNAME, servers.BENCH_PASSWORD
        )
        sampler = stack.enter_context(RssSampler(relay.process.pid))
        targets[mode] = Relay(mode, relay, pacs, client, sampler)
    log(f"writing {rounds} studies of {instances} instances")
    made = [studies.make_study(root / f"study-{n}", instances=instances) for n in range(rounds)]
    figures.study = made[0].label
    for number, study in enumerate(made):
        order = MODES if number % 2 == 0 else tuple(reversed(MODES))
        for mode in order:
            log(f"round {number + 1}, {mode}: ingest, then complete -> completed")
            result = run_round(
                targets[mode], study, s3.process.pid, s3_log if mode == "s3" else None
            )
            figures.rounds.append(result)
            log(
                f"  {result.ingest_bytes / result.ingest_seconds / 1e6:.0f} MB/s ingest, "
                f"{1000 * result.serve_cpu / result.chunks:.1f} ms CPU per chunk, "
                f"complete -> completed {result.complete_seconds:.1f} s"
            )
    for mode, target in targets.items():
        figures.rss[mode] = {
            phase: target.sampler.by_role(phase) for phase in ("ingest", "forward")
        }
    roots = [s3.process.pid] + [
        p for t in targets.values() for p in (t.relay.process.pid, t.pacs.pid)
    ]
    figures.ours_at_end = own_and_reaped_cpu_seconds() + sum(
        sum(tree_cpu_seconds(pid).values()) for pid in roots
    )
    figures.busy_at_end = machine_busy_seconds()


# --- the report ---------------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _each(values: list[float], fmt: str = ".1f") -> str:
    return " / ".join(format(v, fmt) for v in values)


def _role_peak(rss: dict[str, dict[str, int]], words: tuple[str, ...]) -> int:
    """The largest peak over both phases of the roles containing one of ``words``."""
    return max(
        (
            value
            for phase in rss.values()
            for role, value in phase.items()
            if any(w in role for w in words)
        ),
        default=0,
    )


WEB_ROLES = ("uvicorn",)
WORKER_ROLES = ("celery pool", "celery worker")


def _ratio(s3: float, local: float) -> str:
    return f"{s3 / local:.2f}x" if local else "-"


def report(figures: Figures, *, quick: bool) -> str:
    """The figures as a dated Markdown section."""
    m = figures.machine
    local, s3 = figures.of("local"), figures.of("s3")
    chunks = s3[0].chunks

    def per_chunk_ms(rounds: list[Round], attr: str) -> list[float]:
        return [1000 * getattr(r, attr) / r.chunks for r in rounds]

    rows: list[tuple[str, list[float], list[float], str]] = [
        (
            "Ingest, MB/s (client's wall time, 4 chunks in flight)",
            [r.ingest_bytes / r.ingest_seconds / 1e6 for r in local],
            [r.ingest_bytes / r.ingest_seconds / 1e6 for r in s3],
            ".0f",
        ),
        (
            "**Server CPU per chunk during ingest, ms** (serve's processes, user+sys)",
            per_chunk_ms(local, "serve_cpu"),
            per_chunk_ms(s3, "serve_cpu"),
            ".1f",
        ),
        (
            "  of which the web server (uvicorn)",
            per_chunk_ms(local, "web_cpu"),
            per_chunk_ms(s3, "web_cpu"),
            ".1f",
        ),
        (
            "**complete -> completed, s**",
            [r.complete_seconds for r in local],
            [r.complete_seconds for r in s3],
            ".1f",
        ),
        (
            "  of which until processed (queue + check every file)",
            [r.processing_seconds for r in local],
            [r.processing_seconds for r in s3],
            ".1f",
        ),
        (
            "  of which forwarding (STOW-RS into Orthanc, confirm)",
            [r.complete_seconds - r.processing_seconds for r in local],
            [r.complete_seconds - r.processing_seconds for r in s3],
            ".1f",
        ),
        (
            "Server CPU during complete -> completed, s (serve's processes)",
            [r.forward_cpu for r in local],
            [r.forward_cpu for r in s3],
            ".1f",
        ),
    ]
    lines = [
        f"## S3 upload storage against local disk (issue 16), `bench/s3_storage.py` — {m['date']}",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram']} RAM, kernel {m['kernel']}, "
        f"Python {m['python']}, {m['disk_free']}. The run took {figures.elapsed / 60:.1f} min. "
        f"Code measured: {figures.code}.",
        f"`uptime` at start: `{figures.uptime_start}`; at end: `{figures.uptime_end}`. "
        f"Processes the benchmark did not start used {figures.other_cpu:.0f} CPU-seconds during "
        f"the run ({100 * figures.other_cpu / max(1.0, figures.elapsed * int(m['nproc'])):.0f}% "
        "of the machine).",
        f"Study per round: {figures.study}, {chunks} chunks of 1 MiB (the PWA's default), "
        f"4 in flight, each file's SHA-256 in the manifest as the PWA sends it (processing reads "
        f"every byte once to check it). {len(local)} rounds per mode, in the order "
        f"{', '.join(r.mode for r in figures.rounds)}; round k of both modes sends the same "
        "study, each RelayPACS (`manage.py serve`, embedded SQLite and broker) to its own fresh "
        "Orthanc. S3 mode: moto's S3 server, its own process on loopback over HTTP "
        "(5 MiB part minimum as is), on the same 2 CPUs"
        + (
            "; it closes the connection after every answer (`Connection: close`), so each S3 "
            "request here also opens a TCP connection, which S3 itself does not make a client do"
            if figures.s3_closes
            else ""
        )
        + ". MB = 10^6 bytes; figures are the mean of the rounds (each round in brackets).",
        "",
        "| | local disk | S3 (moto) | S3 / local |",
        "|---|---|---|---|",
    ]
    for label, lv, sv, fmt in rows:
        lines.append(
            f"| {label} | {_mean(lv):{fmt}} ({_each(lv, fmt)}) | {_mean(sv):{fmt}} "
            f"({_each(sv, fmt)}) | {_ratio(_mean(sv), _mean(lv))} |"
        )
    s3_ingest = per_chunk_ms(s3, "s3_cpu")
    lines.append(
        f"| S3 server (moto) CPU per chunk during ingest, ms | - | {_mean(s3_ingest):.1f} "
        f"({_each(s3_ingest)}) | |"
    )
    s3_forward = [r.forward_s3_cpu for r in s3]
    lines.append(
        f"| S3 server (moto) CPU during complete -> completed, s | - | {_mean(s3_forward):.1f} "
        f"({_each(s3_forward)}) | |"
    )
    for label, words in (("web (uvicorn)", WEB_ROLES), ("worker (celery)", WORKER_ROLES)):
        for phase in ("ingest", "forward"):
            local_mb = _role_peak({phase: figures.rss["local"][phase]}, words) / 1e6
            s3_mb = _role_peak({phase: figures.rss["s3"][phase]}, words) / 1e6
            what = "ingest" if phase == "ingest" else "complete -> completed"
            lines.append(
                f"| Peak RSS, {label}, during {what}, MB | {local_mb:.0f} | {s3_mb:.0f} "
                f"| {_ratio(s3_mb, local_mb)} |"
            )
    left = [r.upload_dir_bytes for r in s3]
    lines.append(
        f"| Bytes of the upload on the node's disk after ingest (UPLOAD_STORAGE_DIR) "
        f"| {_each([r.upload_dir_bytes / 1e6 for r in local], '.0f')} MB "
        f"| {_each([float(v) for v in left], '.0f')} bytes | |"
    )
    kinds = sorted({k for r in s3 for c in r.requests.values() for k in c})
    lines += [
        "",
        "S3 requests per chunk in S3 mode, counted at the S3 server (its request log), mean of "
        "the rounds; processing ends at the worker's `processed` log line, clean-up is the "
        "deletion after `completed`:",
        "",
        "| request | " + " | ".join(PHASES) + " | total |",
        "|---|" + "---|" * (len(PHASES) + 1),
    ]
    for kind in kinds:
        cells = [_mean([r.requests[p][kind] / r.chunks for r in s3]) for p in PHASES]
        lines.append(
            f"| {kind} | " + " | ".join(f"{c:.3f}" for c in cells) + f" | {sum(cells):.3f} |"
        )
    totals = [_mean([sum(r.requests[p].values()) / r.chunks for r in s3]) for p in PHASES]
    lines.append(
        "| **all** | " + " | ".join(f"**{c:.3f}**" for c in totals) + f" | **{sum(totals):.3f}** |"
    )
    processing_gets = [r.requests["processing"]["GetObject"] / r.files for r in s3]
    forwarding_gets = [r.requests["forwarding"]["GetObject"] / r.files for r in s3]
    lines += [
        "",
        f"Per instance ({s3[0].files} files of {s3[0].ingest_bytes / s3[0].files / 1e6:.2f} MB): "
        f"processing made {_mean(processing_gets):.2f} GETs ({_each(processing_gets, '.2f')}), "
        f"forwarding {_mean(forwarding_gets):.2f} ({_each(forwarding_gets, '.2f')}).",
    ]
    if quick:
        lines += ["", "(--quick: a small study; checks the bench only.)"]
    return "\n".join(lines) + "\n"


def record(section: str) -> None:
    """Append ``section`` at the end of bench/RESULTS.md."""
    with open(RESULTS, "a") as handle:
        handle.write("\n" + section)


def _raise_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every started process is stopped."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a small study: checks the bench")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per mode (at least 2)")
    parser.add_argument(
        "--instances",
        type=int,
        default=studies.INSTANCES_1GB,
        help=f"4 MiB instances per study ({studies.INSTANCES_1GB}: 1 GB, {studies.INSTANCES_2GB}: 2 GB)",
    )
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: the machine is noisy")
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    for name in ENV_OF_STORAGE:  # the local relay runs on the embedded default
        os.environ.pop(name, None)
    started = time.monotonic()
    busy_before, ours_before = machine_busy_seconds(), own_and_reaped_cpu_seconds()
    figures = Figures(
        machine=machine.machine_info(), code=machine.code_version(REPO), uptime_start=_uptime()
    )
    instances = QUICK_INSTANCES if args.quick else args.instances
    with ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="relaypacs-bench-s3-", dir="/tmp"))
        if not args.keep_temp:
            # Registered first, so it runs last: after every process has been stopped.
            stack.callback(shutil.rmtree, root, ignore_errors=True)
        log(f"working in {root}")
        measure(stack, root, figures, instances=instances, rounds=args.rounds)
        log("stopping servers and removing temporary files")
    figures.elapsed = time.monotonic() - started
    ours = figures.ours_at_end - ours_before
    figures.other_cpu = max(0.0, figures.busy_at_end - busy_before - ours)
    figures.uptime_end = _uptime()
    section = report(figures, quick=args.quick)
    print()
    print(section)
    if not args.quick and not args.no_record:
        record(section)
        print(f"Appended to {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
