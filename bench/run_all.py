"""``make bench``: the measurements of issue #2, section 7, in one run.

1. Ingest throughput of 1 MiB chunks with MD5, four in flight, into RelayPACS as
   ``make run`` starts it, against nginx's WebDAV PUT of the same chunks by the same
   client, in turns: nginx, RelayPACS, nginx, RelayPACS, nginx (half the study each).
2. Peak RSS of any single process under ``manage.py serve`` while a 1 GB study is
   ingested and while 1 GB and 2 GB studies are forwarded (complete -> completed).
3. complete -> completed for a 1 GB study against a streamed STOW-RS of the same files,
   in the same 50 MB batches, straight to a second Orthanc (both fresh, configured
   alike); two rounds with two studies, in the order RelayPACS, direct, direct, RelayPACS.
4. Variants that show where the time goes: the embedded broker polled once a second
   (kombu's default, ``settings_slow_broker.py``), direct STOW-RS with two batches in
   flight, and other
   web servers and settings for ingest (``variants.py``), down to a bare ASGI app doing
   only what a chunk must (``floor_app.py``).
5. Forwarding of two other shapes of a 1 GB study, many small instances and few large
   ones (``forward_shapes.py``), and chunk ingest under uvicorn and granian, directly and
   behind the shipped nginx conf, against nginx's WebDAV PUT (``ingest_servers.py``).
   Uploads carry each file's SHA-256, as the PWA sends them (issue 17).
6. The report synchronisation of issue #10 with 10,000 open reports: requests to the PACS
   and time of one cycle (``reports_sync.py``, in a process of its own).

Disk speed swings between runs, so every goal is a ratio of figures from this run. The
figures are printed and appended, dated and with the machine, to ``bench/RESULTS.md``.
Everything runs in a temporary directory under /tmp that is removed at the end, and
every process started here is stopped, also on an error, Ctrl-C or SIGTERM.

Usage: ``.venv/bin/python bench/run_all.py [--quick] [--no-variants] [--no-reports-sync]
[--no-record] [--keep-temp]``
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import (  # noqa: E402
    clients,
    forward_shapes,
    ingest_servers,
    machine,
    servers,
    studies,
    timeline,
    variants,
)
from bench.usage import (  # noqa: E402
    CpuMeter,
    MeteredTransfer,
    ProcessPeak,
    RssSampler,
    machine_busy_seconds,
    metered,
    own_and_reaped_cpu_seconds,
    own_cpu_seconds,
)

RESULTS = REPO / "bench" / "RESULTS.md"
# The goals of issue #2, section 7.
GOAL_INGEST_RATIO = 0.60  # RelayPACS ingest / nginx PUT ingest, at least
GOAL_PEAK_RSS_BYTES = 300 * 1000 * 1000  # any single process, below
GOAL_RSS_GROWTH = 1.20  # peak while forwarding 2 GB / while forwarding 1 GB, at most
# complete -> completed / direct STOW-RS, at most: 1.20 in issue #2, 1.00 since issue 17.
GOAL_FORWARD_RATIO = 1.00
# --quick: the same steps on small studies, to check the bench itself in two minutes.
QUICK_INSTANCES = (24, 48)
PHASES = ("ingest 1 GB", "forward 1 GB", "ingest 2 GB", "forward 2 GB")
# Ingest is measured in interleaved rounds, nginx / RelayPACS / nginx / RelayPACS / nginx,
# each of half the 1 GB study: a drift in disk speed or machine load hits both alike.
INGEST_ROUNDS = 2
# Forwarding is compared in rounds too, one 1 GB study per round (an Orthanc keeps what it
# got, so each round needs new UIDs), in the order RelayPACS, direct, direct, RelayPACS:
# a drift cancels out, and both Orthancs hold the same studies whenever they receive one.
# One STOW-RS of a 1 GB study varies by a quarter or more from one run to the next here.
FORWARD_ROUNDS = 2
# Batches in flight for the parallel direct STOW-RS variant: two already keep Orthanc's
# storage busy while the next batch is on the wire.
STOW_IN_FLIGHT = 2
# Pause after flushing the page cache between phases: the disk's own cache and the
# processes that just finished a phase settle within a second here.
QUIESCE_SECONDS = 1.0
# --quick: the report synchronisation with this many open reports instead of 10,000.
QUICK_REPORTS = 1000
# The report synchronisation stores 10,000 studies into Orthanc and runs two cycles: a few
# minutes here; far more means something hangs.
REPORTS_SYNC_TIMEOUT_SECONDS = 1800


@dataclass
class Forwarding:
    """complete -> completed through RelayPACS, round by round (with the steps read from
    serve's log and the CPU by process role), and direct STOW-RS of the same studies."""

    relay: list[clients.Forwarded] = field(default_factory=list)
    steps: list[list[timeline.Step]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    direct: list[clients.Transfer] = field(default_factory=list)
    direct_cpu: dict[str, float] = field(default_factory=dict)

    @property
    def relay_seconds(self) -> float:
        return sum(f.seconds for f in self.relay) / len(self.relay)

    @property
    def direct_seconds(self) -> float:
        return sum(t.seconds for t in self.direct) / len(self.direct)

    @property
    def ratio(self) -> float:
        return self.relay_seconds / self.direct_seconds

    def mean_steps(self) -> list[timeline.Step]:
        """The steps averaged over the rounds (empty when a round's log was unreadable)."""
        if not self.steps or not all(self.steps):
            return []
        return [
            timeline.Step(name, sum(r[i].seconds for r in self.steps) / len(self.steps))
            for i, name in enumerate(step.name for step in self.steps[0])
        ]


@dataclass
class Figures:
    """Everything one run measured."""

    machine: dict[str, str]
    code: str
    dd_stream: float = 0.0
    dd_sync: float = 0.0
    study_1g: str = ""
    study_2g: str = ""
    nginx_rounds: list[MeteredTransfer] = field(default_factory=list)
    relay_rounds: list[MeteredTransfer] = field(default_factory=list)
    relay_ingest_2g: MeteredTransfer | None = None
    forward_1g: Forwarding | None = None
    forward_2g: Forwarding | None = None
    forward_slow_broker: Forwarding | None = None
    forward_shapes: dict[str, Forwarding] = field(default_factory=dict)
    ingest_servers: list[ingest_servers.CaseResult] = field(default_factory=list)
    direct_parallel: list[clients.Transfer] = field(default_factory=list)
    rss: dict[str, ProcessPeak] = field(default_factory=dict)
    rss_roles: dict[str, dict[str, int]] = field(default_factory=dict)
    variants: list[variants.VariantResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    reports_sync: str = ""  # the Markdown section of bench/reports_sync.py
    elapsed: float = 0.0
    other_cpu: float = 0.0  # CPU seconds used by processes the benchmark did not start
    load_at_start: float = 0.0

    @property
    def nginx(self) -> MeteredTransfer:
        return variants.pooled(self.nginx_rounds)

    @property
    def relay_ingest(self) -> MeteredTransfer:
        return variants.pooled(self.relay_rounds)


def log(message: str) -> None:
    """A progress line on stdout (the figures come at the end)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _quiesce() -> None:
    """Flush dirty pages so one phase's writes are not paid for by the next one."""
    os.sync()
    time.sleep(QUIESCE_SECONDS)


def _check_listed(pacs: servers.Orthanc, study: studies.Study) -> None:
    """RuntimeError unless ``pacs`` lists every instance of ``study``."""
    listed = servers.orthanc_instance_count(pacs, study.study_uid)
    if listed != len(study.paths):
        raise RuntimeError(f"Orthanc {pacs.name} lists {listed} of {len(study.paths)} instances")


def _add(total: dict[str, float], cpu: dict[str, float], share: float) -> None:
    """Add ``cpu`` (seconds by role), times ``share``, into ``total``."""
    for role, seconds in cpu.items():
        total[role] = total.get(role, 0.0) + seconds * share


def _forward(
    forwarding: Forwarding,
    client: clients.RelayClient,
    relay: servers.Relay,
    pacs: servers.Orthanc,
    upload: dict[str, Any],
    *,
    rounds: int = 1,
) -> None:
    """complete -> completed for ``upload``: a round of ``forwarding``, with the CPU of
    serve's processes and of its Orthanc (averaged over ``rounds``)."""
    _quiesce()
    with CpuMeter({"serve": relay.process.pid, "orthanc": pacs.pid}) as meter:
        forwarded = client.complete_and_wait(upload)
    forwarding.relay.append(forwarded)
    forwarding.steps.append(
        timeline.forward_steps(
            relay.log, completed_posted=forwarded.posted_at, completed_seen=forwarded.completed_at
        )
    )
    _add(forwarding.cpu, meter.roles, 1 / rounds)


def _direct(
    forwarding: Forwarding, pacs: servers.Orthanc, study: studies.Study, *, rounds: int
) -> None:
    """STOW-RS of ``study`` straight to ``pacs``: its time and the CPU of Orthanc and of
    the client (averaged over ``rounds``) go to ``forwarding``."""
    _quiesce()
    client_before = own_cpu_seconds()
    with CpuMeter({"orthanc": pacs.pid}) as meter:
        transfer = clients.stow_direct(
            dicomweb_url=pacs.dicomweb_url, auth=(pacs.username, pacs.password), paths=study.paths
        )
    forwarding.direct.append(transfer)
    cpu = {**meter.roles, "bench client": own_cpu_seconds() - client_before}
    _add(forwarding.direct_cpu, cpu, 1 / rounds)
    _check_listed(pacs, study)


def _compare_forwarding(
    client: clients.RelayClient,
    relay: servers.Relay,
    pacs_relay: servers.Orthanc,
    pacs_direct: servers.Orthanc,
    work: list[tuple[studies.Study, dict[str, Any]]],
    phase: Callable[[], AbstractContextManager[None]],
) -> Forwarding:
    """For each received (study, upload): RelayPACS complete -> completed (inside
    ``phase()``) and a direct STOW-RS of the study, in the order RelayPACS, direct,
    direct, RelayPACS, ... The two Orthancs start fresh and alike."""
    forwarding = Forwarding()
    rounds = len(work)
    for number, (study, upload) in enumerate(work):
        relay_first = number % 2 == 0
        if not relay_first:
            _direct(forwarding, pacs_direct, study, rounds=rounds)
        with phase():
            _forward(forwarding, client, relay, pacs_relay, upload, rounds=rounds)
        if relay_first:
            _direct(forwarding, pacs_direct, study, rounds=rounds)
        _check_listed(pacs_relay, study)
    return forwarding


def _start_pacs_pair(
    stack: ExitStack, root: Path, label: str
) -> tuple[servers.Orthanc, servers.Orthanc]:
    """One Orthanc behind RelayPACS and one for direct STOW-RS, fresh and configured alike."""
    relay = servers.start_orthanc(stack, root / "orthanc-relay", name=f"BENCH_RELAY{label}")
    direct = servers.start_orthanc(stack, root / "orthanc-direct", name=f"BENCH_DIRECT{label}")
    return relay, direct


def _receive(
    client: clients.RelayClient, study: studies.Study
) -> tuple[studies.Study, dict[str, Any]]:
    """Upload every chunk of ``study`` (not timed); the upload waits for ``complete``."""
    upload = client.init(study.paths, sha256=True)
    client.send_chunks(upload, study.paths)
    return study, upload


def measure_product(
    stack: ExitStack,
    root: Path,
    figures: Figures,
    studies_1g: list[studies.Study],
    study_2g: studies.Study,
) -> None:
    """Sections 1-3 of issue #2 against ``manage.py serve`` as ``make run`` starts it."""
    pacs_relay, pacs_direct = _start_pacs_pair(stack, root, "")
    nginx = servers.start_nginx(stack, root / "nginx")
    relay = servers.start_relay(stack, root / "relay", pacs_relay)
    client = clients.RelayClient(
        relay.base, relay.port, servers.BENCH_USERNAME, servers.BENCH_PASSWORD
    )
    pid = relay.process.pid
    study_1g = studies_1g[0]

    with RssSampler(pid) as sampler:
        log(f"ingest: nginx and RelayPACS in turn, {INGEST_ROUNDS} rounds ({study_1g.label})")
        total = clients.chunk_count(study_1g.paths)
        rounds = [
            range(total * n // INGEST_ROUNDS, total * (n + 1) // INGEST_ROUNDS)
            for n in range(INGEST_ROUNDS)
        ]
        upload_1g = client.init(study_1g.paths, sha256=True)
        figures.nginx_rounds.append(
            variants.nginx_metered(nginx, study_1g.paths, "0", _quiesce, indexes=rounds[0])
        )
        for number, chunks in enumerate(rounds, start=1):
            _quiesce()
            with sampler.phase("ingest 1 GB"):
                send = functools.partial(client.send_chunks, upload_1g, study_1g.paths, chunks)
                figures.relay_rounds.append(metered(pid, send))
            figures.nginx_rounds.append(
                variants.nginx_metered(
                    nginx,
                    study_1g.paths,
                    str(number),
                    _quiesce,
                    indexes=rounds[number % len(rounds)],
                )
            )
        work = [(study_1g, upload_1g), *(_receive(client, s) for s in studies_1g[1:])]

        log(f"forward 1 GB, {len(work)} rounds: RelayPACS and STOW-RS direct in turn")
        figures.forward_1g = _compare_forwarding(
            client, relay, pacs_relay, pacs_direct, work, lambda: sampler.phase("forward 1 GB")
        )

        log(f"2 GB study: ingest and forward ({study_2g.label})")
        upload_2g = client.init(study_2g.paths)
        _quiesce()
        with sampler.phase("ingest 2 GB"):
            figures.relay_ingest_2g = metered(
                pid, functools.partial(client.send_chunks, upload_2g, study_2g.paths)
            )
        figures.forward_2g = Forwarding()
        with sampler.phase("forward 2 GB"):
            _forward(figures.forward_2g, client, relay, pacs_relay, upload_2g)
        _check_listed(pacs_relay, study_2g)

    for phase in PHASES:
        figures.rss[phase] = sampler.peak(phase)
        figures.rss_roles[phase] = sampler.by_role(phase)


def measure_forwarding_variants(
    root: Path, figures: Figures, studies_1g: list[studies.Study]
) -> None:
    """Forwarding compared again with the embedded broker polled once a second (kombu's
    default; the product polls every 0.1 s); then the same studies sent directly with
    STOW_IN_FLIGHT batches at a time."""
    with ExitStack() as stack:
        pacs_relay, pacs_direct = _start_pacs_pair(stack, root, "_SLOW")
        relay = servers.start_relay(
            stack, root / "relay", pacs_relay, DJANGO_SETTINGS_MODULE="bench.settings_slow_broker"
        )
        client = clients.RelayClient(
            relay.base, relay.port, servers.BENCH_USERNAME, servers.BENCH_PASSWORD
        )
        work = [_receive(client, study) for study in studies_1g]
        figures.forward_slow_broker = _compare_forwarding(
            client, relay, pacs_relay, pacs_direct, work, nullcontext
        )
        pacs_parallel = servers.start_orthanc(stack, root / "orthanc-parallel", name="BENCH_PAR")
        for study in studies_1g:
            _quiesce()
            figures.direct_parallel.append(
                clients.stow_direct(
                    dicomweb_url=pacs_parallel.dicomweb_url,
                    auth=(pacs_parallel.username, pacs_parallel.password),
                    paths=study.paths,
                    in_flight=STOW_IN_FLIGHT,
                )
            )
            _check_listed(pacs_parallel, study)


def measure_reports_sync(root: Path, figures: Figures, *, quick: bool) -> None:
    """bench/reports_sync.py in a process of its own, on the embedded default (SQLite,
    like the other steps); its section goes into this run's."""
    section = root / "reports-sync.md"
    argv = [sys.executable, str(REPO / "bench" / "reports_sync.py"), "--no-record"]
    argv += ["--section-out", str(section)]
    if quick:
        argv += ["--reports", str(QUICK_REPORTS)]
    env = {k: v for k, v in os.environ.items() if k not in servers.FOREIGN_ENV}
    try:
        subprocess.run(argv, cwd=REPO, env=env, check=True, timeout=REPORTS_SYNC_TIMEOUT_SECONDS)
        # A subsection of this run's section.
        figures.reports_sync = "#" + section.read_text()
    except (subprocess.SubprocessError, OSError) as exc:
        figures.notes.append(f"The report synchronisation benchmark failed: {exc}".splitlines()[0])


def measure(
    stack: ExitStack,
    root: Path,
    figures: Figures,
    *,
    quick: bool,
    with_variants: bool,
    with_reports_sync: bool = True,
) -> None:
    """Run every measurement in order, filling ``figures``."""
    figures.dd_stream = machine.dd_write_mb_per_s(
        root, mib=machine.DD_STREAM_MIB, flag="conv=fdatasync"
    )
    figures.dd_sync = machine.dd_write_mb_per_s(root, mib=machine.DD_SYNC_MIB, flag="oflag=dsync")

    small, large = QUICK_INSTANCES if quick else (studies.INSTANCES_1GB, studies.INSTANCES_2GB)
    log(f"writing synthetic studies: {FORWARD_ROUNDS} of {small} instances, one of {large}")
    studies_1g = [
        studies.make_study(root / f"study-1g-{n}", instances=small) for n in range(FORWARD_ROUNDS)
    ]
    study_2g = studies.make_study(root / "study-2g", instances=large)
    figures.study_1g, figures.study_2g = studies_1g[0].label, study_2g.label

    measure_product(stack, root / "product", figures, studies_1g, study_2g)
    log("forwarding other shapes of 1 GB: many small instances, few large ones")
    try:
        figures.forward_shapes = forward_shapes.measure(
            root / "shapes",
            forward_shapes.QUICK_SHAPES if quick else forward_shapes.SHAPES,
            _compare_forwarding,
            log,
        )
    except Exception as exc:  # a failing shape must not lose the figures above
        figures.notes.append(f"The forwarding shapes failed: {exc}".splitlines()[0])
    log("ingest under uvicorn and granian, direct and behind nginx (ingest_servers.py)")
    try:
        with ExitStack() as servers_stack:
            pacs = servers.start_orthanc(servers_stack, root / "servers-orthanc", name="BENCH_SRV")
            yardstick = servers.start_nginx(servers_stack, root / "servers-nginx")
            half = studies_1g[0].first(studies_1g[0].size // 2)
            figures.ingest_servers = ingest_servers.measure(
                root / "ingest-servers", half, yardstick, pacs, _quiesce, log
            )
    except Exception as exc:  # a failing case must not lose the figures above
        figures.notes.append(f"The ingest server comparison failed: {exc}".splitlines()[0])
    if with_reports_sync:
        log("report synchronisation with 10,000 open reports (bench/reports_sync.py)")
        measure_reports_sync(root, figures, quick=quick)
    if not with_variants:
        return
    log("forwarding variants: broker polled once a second; direct with 2 batches in flight")
    try:
        measure_forwarding_variants(root / "forwarding-variants", figures, studies_1g)
    except Exception as exc:  # a variant failing must not lose the figures above
        figures.notes.append(f"The slow-broker variant failed: {exc}".splitlines()[0])
    log("ingest with other web servers and settings (variants)")
    try:
        with ExitStack() as variant_stack:
            pacs = servers.start_orthanc(variant_stack, root / "variants-orthanc", name="BENCH_VAR")
            nginx = servers.start_nginx(variant_stack, root / "variants-nginx")
            half = studies_1g[0].first(studies_1g[0].size // 2)
            figures.variants = variants.ingest_variants(
                root / "variants", half, nginx, pacs, _quiesce
            )
    except Exception as exc:
        figures.notes.append(f"The web server variants failed: {exc}".splitlines()[0])


# --- Report ----------------------------------------------------------------------------


def _met(ok: bool) -> str:
    """The last column of the goals table."""
    return "met" if ok else "**not met**"


def _mb(value: float) -> str:
    """Bytes as whole MB (10^6)."""
    return f"{value / 1e6:.0f} MB"


def _cpu_text(cpu: dict[str, float]) -> str:
    """CPU seconds by role, largest first, for one line of the report."""
    parts = sorted(cpu.items(), key=lambda item: -item[1])
    return ", ".join(f"{role} {seconds:.1f} s" for role, seconds in parts if seconds >= 0.05)


def _cpu_ceiling(relay: MeteredTransfer, nginx: MeteredTransfer) -> str:
    """What CPU alone allows: both sides share the machine's cores with the client."""
    relay_ms = relay.server_ms_per_request + relay.client_ms_per_request
    nginx_ms = nginx.server_ms_per_request + nginx.client_ms_per_request
    budget = nginx_ms / GOAL_INGEST_RATIO - relay.client_ms_per_request
    return (
        f"Server + client CPU per chunk: RelayPACS {relay_ms:.1f} ms, nginx {nginx_ms:.1f} ms. When "
        f"both are CPU-bound the ratio cannot exceed {nginx_ms / relay_ms:.2f}x; "
        f"{GOAL_INGEST_RATIO:.2f}x needs RelayPACS's processes at <= {budget:.1f} ms per chunk."
    )


def _steps_table(forwardings: dict[str, Forwarding]) -> list[str]:
    """Markdown rows: each step of complete -> completed, one column per case."""
    steps = {label: f.mean_steps() for label, f in forwardings.items()}
    names = [step.name for step in next(iter(steps.values()))]
    lines = [
        "| Step (from serve's log; mean of the rounds) | " + " | ".join(forwardings) + " |",
        "|---|" + "---|" * len(forwardings),
    ]
    for index, name in enumerate(names):
        cells = [f"{s[index].seconds:.1f} s" if len(s) > index else "" for s in steps.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    totals = [
        f"**{f.relay_seconds:.1f} s** ({' / '.join(f'{r.seconds:.1f}' for r in f.relay)})"
        for f in forwardings.values()
    ]
    lines.append("| **complete -> completed** (rounds) | " + " | ".join(totals) + " |")
    directs = [
        f"{f.direct_seconds:.1f} s ({' / '.join(f'{t.seconds:.1f}' for t in f.direct)})"
        if f.direct
        else ""
        for f in forwardings.values()
    ]
    lines.append("| direct STOW-RS (rounds) | " + " | ".join(directs) + " |")
    return lines


def _shapes_lines(shapes: dict[str, Forwarding]) -> list[str]:
    """Markdown: the steps of each shape of forward_shapes.py, and its ratio to direct."""
    if not shapes:
        return []
    lines = [
        "Forwarding of other shapes of a 1 GB study (`bench/forward_shapes.py`: uploaded with "
        "each file's SHA-256 as the PWA sends it; fresh Orthancs; rounds RelayPACS, direct, "
        "direct, RelayPACS):",
        "",
    ]
    if all(f.mean_steps() for f in shapes.values()):
        lines += _steps_table(shapes)
    ratios = [
        f"**{f.ratio:.2f}x** ({_met(f.ratio <= GOAL_FORWARD_RATIO)})" for f in shapes.values()
    ]
    lines.append(
        f"| **ratio RelayPACS / direct** (goal <= {GOAL_FORWARD_RATIO:.2f}x) | "
        + " | ".join(ratios)
        + " |"
    )
    lines.append("")
    lines += [
        f"- CPU during complete -> completed, {label} (mean of the rounds): {_cpu_text(f.cpu)}; "
        f"during a direct STOW-RS: {_cpu_text(f.direct_cpu)}."
        for label, f in shapes.items()
    ]
    return lines


def _goals(figures: Figures) -> list[str]:
    """Markdown rows of the goals table of issue #2."""
    relay, nginx = figures.relay_ingest, figures.nginx
    f1 = figures.forward_1g
    assert f1
    rounds_relay = " / ".join(f"{r.transfer.mb_per_s:.0f}" for r in figures.relay_rounds)
    rounds_nginx = " / ".join(f"{r.transfer.mb_per_s:.0f}" for r in figures.nginx_rounds)
    ingest_ratio = relay.transfer.mb_per_s / nginx.transfer.mb_per_s
    rss_ingest, rss_f1, rss_f2 = (
        figures.rss[p] for p in ("ingest 1 GB", "forward 1 GB", "forward 2 GB")
    )
    growth = rss_f2.rss / rss_f1.rss
    limit = _mb(GOAL_PEAK_RSS_BYTES)
    return [
        "| Figure | Value | Goal | |",
        "|---|---|---|---|",
        "| Ingest of the 1 GB study into RelayPACS (`manage.py serve`; 1 MiB chunks with MD5, "
        f"4 in flight; rounds) | {relay.transfer.mb_per_s:.0f} MB/s ({rounds_relay}) | | |",
        "| Same chunks, same client, nginx WebDAV PUT (rounds before, between and after) "
        f"| {nginx.transfer.mb_per_s:.0f} MB/s ({rounds_nginx}) | | |",
        f"| **Ingest ratio RelayPACS / nginx** | **{ingest_ratio:.2f}x** "
        f"| >= {GOAL_INGEST_RATIO:.2f}x | {_met(ingest_ratio >= GOAL_INGEST_RATIO)} |",
        f"| Peak RSS of one process, ingest of 1 GB | {_mb(rss_ingest.rss)} ({rss_ingest.role}) "
        f"| < {limit} | {_met(rss_ingest.rss < GOAL_PEAK_RSS_BYTES)} |",
        f"| Peak RSS of one process, forwarding 1 GB | {_mb(rss_f1.rss)} ({rss_f1.role}) "
        f"| < {limit} | {_met(rss_f1.rss < GOAL_PEAK_RSS_BYTES)} |",
        f"| Peak RSS of one process, forwarding 2 GB | {_mb(rss_f2.rss)} ({rss_f2.role}), "
        f"{growth:.2f}x the 1 GB figure | <= {GOAL_RSS_GROWTH:.2f}x, < {limit} "
        f"| {_met(growth <= GOAL_RSS_GROWTH and rss_f2.rss < GOAL_PEAK_RSS_BYTES)} |",
        f"| complete -> completed, 1 GB, through RelayPACS ({len(f1.relay)} rounds, 2 studies) "
        f"| {f1.relay_seconds:.1f} s ({' / '.join(f'{r.seconds:.1f}' for r in f1.relay)}) | | |",
        "| STOW-RS of the same studies straight to an identical, fresh Orthanc "
        f"({f1.direct[0].requests} streamed batches; rounds) "
        f"| {f1.direct_seconds:.1f} s ({' / '.join(f'{t.seconds:.1f}' for t in f1.direct)}) | | |",
        f"| **Forwarding ratio RelayPACS / direct** | **{f1.ratio:.2f}x** "
        f"| <= {GOAL_FORWARD_RATIO:.2f}x | {_met(f1.ratio <= GOAL_FORWARD_RATIO)} |",
    ]


def report(figures: Figures) -> str:
    """The figures as a dated Markdown section: machine, goals table, details."""
    m = figures.machine
    relay, nginx, f1, f2 = (
        figures.relay_ingest,
        figures.nginx,
        figures.forward_1g,
        figures.forward_2g,
    )
    assert relay and f1 and f2 and figures.relay_ingest_2g
    lines = [
        f"## Run of {m['date']}",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram']} RAM, kernel {m['kernel']}, "
        f"Python {m['python']}, {m['disk_free']}. The run took {figures.elapsed / 60:.1f} min.",
        f"Code measured: {figures.code}. Load average at start {figures.load_at_start:.2f}; "
        f"processes the benchmark did not start used {figures.other_cpu:.0f} CPU-seconds during it "
        f"({100 * figures.other_cpu / (figures.elapsed * int(m['nproc'])):.0f}% of the machine): "
        "more than a few percent disturbs the figures.",
        f"Disk, for reference only (dd bs=1M of zeros): {figures.dd_stream:.0f} MB/s streamed "
        f"(conv=fdatasync, {machine.DD_STREAM_MIB} MiB); {figures.dd_sync:.0f} MB/s with a flush "
        f"per 1 MiB (oflag=dsync, {machine.DD_SYNC_MIB} MiB).",
        f'Studies: "1 GB" = {figures.study_1g}; "2 GB" = {figures.study_2g}. MB = 10^6 bytes.',
        "",
        *_goals(figures),
        "",
        f"Ingest, CPU per 1 MiB chunk (user+system): RelayPACS's processes "
        f"{relay.server_ms_per_request:.1f} ms, the client {relay.client_ms_per_request:.1f} ms; "
        f"nginx {nginx.server_ms_per_request:.1f} ms, the client {nginx.client_ms_per_request:.1f} ms. "
        f"Ingest of the 2 GB study: {figures.relay_ingest_2g.transfer.mb_per_s:.0f} MB/s.",
        _cpu_ceiling(relay, nginx),
        "",
        "Peak RSS by process role (MB):",
        "",
        "| Role | " + " | ".join(figures.rss_roles) + " |",
        "|---|" + "---|" * len(figures.rss_roles),
    ]
    roles = sorted({role for phase in figures.rss_roles.values() for role in phase})
    for role in roles:
        cells = [f"{figures.rss_roles[p].get(role, 0) / 1e6:.0f}" for p in figures.rss_roles]
        lines.append(f"| {role} | " + " | ".join(cells) + " |")
    forwardings = {"1 GB": f1, "2 GB": f2}
    slow = figures.forward_slow_broker
    if slow:
        forwardings["1 GB, broker polled once a second"] = slow
    if all(f.mean_steps() for f in forwardings.values()):
        lines += ["", "Where complete -> completed goes:", "", *_steps_table(forwardings)]
    lines += [
        "",
        f"CPU during complete -> completed, 1 GB (mean of the rounds): {_cpu_text(f1.cpu)}. "
        f"During a direct STOW-RS of it: {_cpu_text(f1.direct_cpu)}.",
    ]
    if slow:
        lines += [
            "",
            "Variant `bench/settings_slow_broker.py` (embedded broker polled once a second, "
            "kombu's default, instead of every 0.1 s; fresh Orthancs): complete -> completed "
            f"{slow.relay_seconds:.1f} s against "
            f"{slow.direct_seconds:.1f} s direct: **{slow.ratio:.2f}x** "
            f"({_met(slow.ratio <= GOAL_FORWARD_RATIO)} with that setting).",
        ]
    if figures.ingest_servers:
        lines += ["", *ingest_servers.report(figures.ingest_servers)]
    if figures.forward_shapes:
        lines += ["", *_shapes_lines(figures.forward_shapes)]
    if slow and figures.direct_parallel:
        parallel = sum(t.seconds for t in figures.direct_parallel) / len(figures.direct_parallel)
        lines += [
            "",
            f"Direct STOW-RS of the same studies with {STOW_IN_FLIGHT} batches in flight (another "
            f"fresh Orthanc): {parallel:.1f} s "
            f"({' / '.join(f'{t.seconds:.1f}' for t in figures.direct_parallel)}), against "
            f"{slow.direct_seconds:.1f} s one batch at a time in the same variant.",
        ]
    if figures.variants:
        lines += ["", variants.report(figures.variants)]
    if figures.notes:
        lines += ["", *(f"- {note}" for note in figures.notes)]
    if figures.reports_sync:
        lines += ["", figures.reports_sync.rstrip("\n")]
    return "\n".join(lines) + "\n"


def record(section: str) -> None:
    """Append ``section`` to bench/RESULTS.md (created with a title if missing)."""
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results (issue #2, section 7)\n")
    with open(RESULTS, "a") as handle:
        handle.write("\n" + section)


def _raise_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so every started process is stopped."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when it completed (goals met or not)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small studies: checks the bench only")
    parser.add_argument("--no-variants", action="store_true", help="skip the variants (step 4)")
    parser.add_argument(
        "--no-reports-sync", action="store_true", help="skip the report synchronisation (step 6)"
    )
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    started = time.monotonic()
    busy_before, ours_before = machine_busy_seconds(), own_and_reaped_cpu_seconds()
    figures = Figures(machine=machine.machine_info(), code=machine.code_version(REPO))
    figures.load_at_start = os.getloadavg()[0]
    with ExitStack() as stack:
        root = Path(tempfile.mkdtemp(prefix="relaypacs-bench-", dir="/tmp"))
        if not args.keep_temp:
            # Registered first, so it runs last: after every process has been stopped.
            stack.callback(shutil.rmtree, root, ignore_errors=True)
        log(f"working in {root}")
        measure(
            stack,
            root,
            figures,
            quick=args.quick,
            with_variants=not args.no_variants,
            with_reports_sync=not args.no_reports_sync,
        )
        log("stopping servers and removing temporary files")
    figures.elapsed = time.monotonic() - started
    ours = own_and_reaped_cpu_seconds() - ours_before
    figures.other_cpu = max(0.0, machine_busy_seconds() - busy_before - ours)
    section = report(figures)
    print()
    print(section)
    if args.quick:
        print("(--quick: small studies, not recorded)")
    elif not args.no_record:
        record(section)
        print(f"Appended to {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
