"""What the figures were measured on, and the raw disk speed they should be read against."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

# Big enough that the disk's write cache cannot hide the device speed, small enough to
# take a few seconds on this machine's disk.
DD_STREAM_MIB = 1024
# dd with a flush per 1 MiB write (oflag=dsync) is what a server that fdatasyncs every
# 1 MiB chunk asks of the disk; fewer blocks keep it short on a slow disk.
DD_SYNC_MIB = 256


def _first_match(path: str, pattern: str) -> str:
    """Group 1 of ``pattern`` in the file at ``path``, or 'unknown'."""
    try:
        text = Path(path).read_text()
    except OSError:
        return "unknown"
    match = re.search(pattern, text, re.MULTILINE)
    return match.group(1).strip() if match else "unknown"


def code_version(repo: Path) -> str:
    """The commit measured, and whether files outside bench/ differed from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", ".", ":!bench"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {commit}" + (f" with {len(changed)} uncommitted changes" if changed else "")


def machine_info() -> dict[str, str]:
    """nproc, RAM, CPU model, kernel, Python and the local date, as display strings."""
    mem_kib = _first_match("/proc/meminfo", r"^MemTotal:\s+(\d+)")
    ram = f"{int(mem_kib) / 1024**2:.1f} GiB" if mem_kib.isdigit() else "unknown"
    return {
        "date": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": str(len(os.sched_getaffinity(0))),
        "ram": ram,
        "cpu": _first_match("/proc/cpuinfo", r"^model name\s*:\s*(.+)$"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "disk_free": f"{shutil.disk_usage('/tmp').free / 1024**3:.0f} GiB free in /tmp",
    }


def dd_write_mb_per_s(directory: Path, *, mib: int, flag: str) -> float:
    """Write ``mib`` MiB of zeros with ``dd bs=1M`` and ``flag``; MB/s (10^6 bytes/s).

    ``flag`` is ``conv=fdatasync`` (one flush at the end) or ``oflag=dsync`` (a flush per
    block). The file is removed afterwards. Raises RuntimeError when dd fails.
    """
    target = directory / "dd.bin"
    try:
        result = subprocess.run(
            ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={mib}", flag],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        target.unlink(missing_ok=True)
    match = re.search(r"^(\d+) bytes .* copied, ([\d.,]+) s", result.stderr, re.MULTILINE)
    if result.returncode != 0 or match is None:
        raise RuntimeError(f"dd failed: {result.stderr.strip()}")
    seconds = float(match.group(2).replace(",", "."))
    return int(match.group(1)) / seconds / 1e6
