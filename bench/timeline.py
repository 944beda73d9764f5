"""Where the time from ``complete`` to ``completed`` goes, read from serve's log.

``manage.py serve`` sends the Celery worker's log to its own output, which the benchmark
keeps in a file: task received/succeeded lines and one line per STOW-RS batch give the
steps of the pipeline. Timestamps there are local time with milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

PROCESS_TASK = "uploads.tasks.upload_process_task"
FORWARD_TASK = "uploads.tasks.upload_forward_task"
_STAMP = re.compile(r"^\[?(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
_TASK = re.compile(r"Task (?P<task>[\w.]+)\[[^\]]+\] (?P<what>received|succeeded)")
_BATCH = re.compile(r"batch (?P<number>\d+)/(?P<of>\d+) via STOW-RS")
_PROCESSED = re.compile(r"upload \S+ processed: ")


@dataclass(frozen=True)
class Step:
    """One step of the pipeline and how long it took."""

    name: str
    seconds: float


def _events(log: Path, since: float, until: float) -> list[tuple[float, str]]:
    """(epoch seconds, line) of each timestamped log line between ``since`` and ``until``."""
    events = []
    for line in log.read_text(errors="replace").splitlines():
        stamp = _STAMP.match(line)
        if not stamp:
            continue
        when = datetime.strptime(
            stamp.group(1), "%Y-%m-%d %H:%M:%S,%f"
        ).timestamp()  # the log's local time
        if since <= when <= until:
            events.append((when, line))
    return events


def forward_steps(log: Path, *, completed_posted: float, completed_seen: float) -> list[Step]:
    """The steps between the client's ``complete`` and its seeing ``completed``.

    ``completed_posted`` and ``completed_seen`` are epoch seconds taken by the client.
    Returns an empty list when the log does not hold the expected lines.
    """
    marks: dict[str, float] = {}
    batches: list[float] = []
    for when, line in _events(log, completed_posted - 0.01, completed_seen + 0.01):
        if task := _TASK.search(line):
            marks.setdefault(f"{task['task']} {task['what']}", when)
        elif _PROCESSED.search(line):
            marks.setdefault("processed", when)
        elif _BATCH.search(line):
            batches.append(when)
    try:
        process_in = marks[f"{PROCESS_TASK} received"]
        process_out = marks.get("processed") or marks[f"{PROCESS_TASK} succeeded"]
    except KeyError:
        return []
    # Since forwarding follows processing in the same task, no forwarding task is queued:
    # the broker step is then zero.
    forward_in = marks.get(f"{FORWARD_TASK} received", process_out)
    last_batch = batches[-1] if batches else forward_in
    # The worker logs "succeeded" only after deleting the upload's files, which can be
    # after the client saw "completed": the last step ends at the client's time.
    return [
        Step("queued for processing (broker)", process_in - completed_posted),
        Step("processing (check every file)", process_out - process_in),
        Step("queued for forwarding (broker)", forward_in - process_out),
        Step(
            f"STOW-RS, {len(batches)} batches, with per-batch bookkeeping", last_batch - forward_in
        ),
        Step(
            "confirm (the PACS lists every instance), record receipt, client's next status poll",
            completed_seen - last_batch,
        ),
    ]
