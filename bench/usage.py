"""What processes cost: peak resident memory of a process tree, phase by phase, and CPU
time spent by process trees during a measurement."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psutil

from bench.clients import Transfer

# Issue #2 asks for a sample about every 100 ms: a peak shorter than that (one request
# body) is caught on most runs, and sampling a handful of processes costs next to nothing.
SAMPLE_SECONDS = 0.1


@dataclass(frozen=True)
class ProcessPeak:
    """The largest RSS seen for one process, in bytes."""

    pid: int
    role: str
    rss: int


def process_role(process: psutil.Process) -> str:
    """A readable name for one of serve's processes: web, worker, beat, ..."""
    try:
        command = " ".join(process.cmdline())
        parent = process.parent()
        parent_command = " ".join(parent.cmdline()) if parent else ""
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    if "manage.py serve" in command:
        return "serve (supervisor)"
    if "uvicorn" in command:
        return "uvicorn (main)"
    if "gunicorn" in command:
        return "gunicorn worker" if "gunicorn" in parent_command else "gunicorn (main)"
    if "resource_tracker" in command:
        return "multiprocessing resource tracker"
    if "multiprocessing" in command:
        return "uvicorn worker" if "uvicorn" in parent_command else "multiprocessing child"
    if "celery" in command and " beat" in command:
        return "celery beat"
    if "celery" in command and " worker" in command:
        return "celery pool process" if "celery" in parent_command else "celery worker (main)"
    return process.name()


class RssSampler:
    """Samples the RSS of ``root_pid`` and all its descendants every SAMPLE_SECONDS.

    Peaks are kept per phase (``with sampler.phase("forward 1 GB"):``) and per process;
    samples taken outside a phase are kept under ``"idle"``. Use as a context manager.
    """

    def __init__(self, root_pid: int) -> None:
        self.root = psutil.Process(root_pid)
        self.current = "idle"
        self.peaks: dict[str, dict[int, ProcessPeak]] = {}
        self._roles: dict[int, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Attribute samples to ``name`` while the block runs (one sample at each edge)."""
        with self._lock:
            self.current = name
        self.sample()
        try:
            yield
        finally:
            self.sample()
            with self._lock:
                self.current = "idle"

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            self.sample()

    def sample(self) -> None:
        """Record one RSS reading of every live process of the tree."""
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        readings = []
        for process in processes:
            try:
                rss = process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if process.pid not in self._roles:
                self._roles[process.pid] = process_role(process)
            readings.append((process.pid, rss))
        with self._lock:
            peaks = self.peaks.setdefault(self.current, {})
            for pid, rss in readings:
                known = peaks.get(pid)
                if known is None or rss > known.rss:
                    peaks[pid] = ProcessPeak(pid=pid, role=self._roles[pid], rss=rss)

    def peak(self, phase: str, *, children_only: bool = True) -> ProcessPeak:
        """The largest single-process peak of ``phase`` (of serve's children by default)."""
        with self._lock:
            candidates = [
                p
                for p in self.peaks.get(phase, {}).values()
                if not (children_only and p.pid == self.root.pid)
            ]
        if not candidates:
            raise RuntimeError(f"no RSS sample in phase {phase!r}")
        return max(candidates, key=lambda p: p.rss)

    def by_role(self, phase: str) -> dict[str, int]:
        """Largest peak of each role in ``phase`` (several uvicorn workers share a role)."""
        roles: dict[str, int] = {}
        with self._lock:
            for p in self.peaks.get(phase, {}).values():
                roles[p.role] = max(roles.get(p.role, 0), p.rss)
        return roles


def tree_cpu_seconds(root_pid: int) -> dict[int, float]:
    """User + system CPU seconds so far of ``root_pid`` and each live descendant, by pid."""
    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    seconds = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        seconds[process.pid] = times.user + times.system
    return seconds


class CpuMeter:
    """CPU seconds that named process trees spend inside a ``with`` block.

    ``CpuMeter({"server": pid})``; after the block ``seconds`` maps each name to the CPU
    time its tree used, and ``roles`` the same time by process role. A process that
    exits inside the block is not counted (the servers measured here keep theirs).
    """

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots
        self.seconds: dict[str, float] = {}
        self.roles: dict[str, float] = {}
        self._before: dict[str, dict[int, float]] = {}

    def __enter__(self) -> CpuMeter:
        self._before = {name: tree_cpu_seconds(pid) for name, pid in self.roots.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        for name, pid in self.roots.items():
            after = tree_cpu_seconds(pid)
            before = self._before[name]
            used = {p: seconds - before.get(p, 0.0) for p, seconds in after.items()}
            self.seconds[name] = sum(used.values())
            for p, seconds in used.items():
                role = _role_of(p)
                self.roles[role] = self.roles.get(role, 0.0) + seconds


def _role_of(pid: int) -> str:
    try:
        return process_role(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return "gone"


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine have used since boot (steal excluded)."""
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq


def own_and_reaped_cpu_seconds() -> float:
    """CPU seconds of this process and of every descendant that has exited and been reaped.

    Read after every child has stopped, this is all the CPU the benchmark caused.
    """
    times = psutil.Process().cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def own_cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (not of its children)."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


@dataclass(frozen=True)
class MeteredTransfer:
    """A chunk transfer with the CPU time the server and the client spent on it."""

    transfer: Transfer
    server_cpu: float
    client_cpu: float

    @property
    def server_ms_per_request(self) -> float:
        return 1000 * self.server_cpu / self.transfer.requests

    @property
    def client_ms_per_request(self) -> float:
        return 1000 * self.client_cpu / self.transfer.requests


def metered(server_pid: int, send: Callable[[], Transfer]) -> MeteredTransfer:
    """Run ``send()``; measure the CPU of the server's process tree and of this process.

    The client is this process alone (its children are the servers being measured).
    """
    client_before = own_cpu_seconds()
    with CpuMeter({"server": server_pid}) as meter:
        transfer = send()
    return MeteredTransfer(transfer, meter.seconds["server"], own_cpu_seconds() - client_before)
