"""Benchmark of the live stream (issue #12): latency from a domain event in a producing
process (the worker's side) to the message in a browser page, over 200 events, for SSE
(``EventSource``) and WebSocket in the same Chromium page, with the embedded default
(SQLite, no Redis: the web processes check the database every 0.2 s) and with Redis
(channels-redis wake-ups).

``manage.py serve`` runs as ``make run`` starts it (two uvicorn web processes, a Celery
worker and beat) against a fresh Orthanc. The events are emitted by a separate Python
process on the product's database, exactly as the Celery worker emits them after a
transition commits (``relaypacs.events.emit`` -> the notifications subscriber ->
``event_append`` -> commit -> wake-up): the clock starts just before ``emit`` and stops
in the page when the message arrives (``performance.timeOrigin + performance.now()``;
the same machine's clock). Events are spaced EVENT_INTERVAL_SECONDS apart.

Usage: ``.venv/bin/python bench/notifications_latency.py [--events N] [--no-record]
[--no-redis] [--redis-url URL] [--keep-temp]``
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import machine, servers  # noqa: E402

RESULTS = REPO / "bench" / "RESULTS.md"
EVENTS = 200
# Far apart enough that each event is measured on its own (not queued behind the one
# before), close enough that 200 take under a minute.
EVENT_INTERVAL_SECONDS = 0.1
# Real one-image uploads whose worker-emitted events are measured too (two events each).
WORKER_UPLOADS = 100
# The goal (the seeds ask < 5 s).
GOAL_P95_SECONDS = 1.0
CHROMIUM = "/usr/bin/chromium"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

PAGE_SCRIPT = """
([sseTicket, wsTicket]) => new Promise((resolve, reject) => {
  window.arrivals = {sse: {}, ws: {}};
  window.readyAt = {};
  const now = () => performance.timeOrigin + performance.now();
  const source = new EventSource(`/api/v1/notifications/stream?ticket=${sseTicket}`);
  source.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === "ready") window.readyAt.sse = m.id;
    else if (m.type !== "heartbeat") window.arrivals.sse[m.id] = [now(), m.type, m.created_at];
  };
  source.onerror = () => { if (source.readyState === 2) reject("EventSource closed"); };
  const ws = new WebSocket(`ws://${location.host}/ws/notifications?ticket=${wsTicket}`);
  ws.onopen = () => ws.send(JSON.stringify({type: "resume", after: null}));
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === "ready") window.readyAt.ws = m.id;
    else if (m.type !== "heartbeat") window.arrivals.ws[m.id] = [now(), m.type, m.created_at];
  };
  const wait = () => (window.readyAt.sse !== undefined && window.readyAt.ws !== undefined)
    ? resolve(window.readyAt) : setTimeout(wait, 20);
  wait();
})
"""


def produce(*, upload_id: str, count: int, interval: float) -> None:
    """The producing side, run in a process of its own with the product's environment:
    ``count`` domain events, printing the time each was emitted (one JSON list)."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relaypacs.settings.dev")
    django.setup()
    from relaypacs import events

    emitted: list[float] = []
    for _ in range(count):
        started = time.time()
        events.emit(events.UPLOAD_FORWARDING, upload_id=upload_id)
        emitted.append(started)
        time.sleep(max(0.0, interval - (time.time() - started)))
    print(json.dumps(emitted))


def _redis_up(url: str) -> bool:
    parts = urlparse(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 2):
            return True
    except OSError:
        return False


def _upload_for_events(base: str, access: str) -> str:
    """A real upload of the bench user (left receiving): the events are about it."""
    sample = REPO / "README.md"
    body = {
        "files": [
            {
                "name": "one.dcm",
                "size": sample.stat().st_size,
                "sha256": hashlib.sha256(sample.read_bytes()).hexdigest(),
            }
        ]
    }
    response = requests.post(
        f"{base}/api/v1/upload/init",
        json=body,
        headers={"Authorization": f"Bearer {access}"},
        timeout=30,
    )
    response.raise_for_status()
    return str(response.json()["upload_id"])


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _real_uploads(
    base: str, access: str, page: Any, *, uploads: int, before: dict[str, set[str]]
) -> dict[str, Any]:
    """``uploads`` one-file uploads (pydicom's CT_small.dcm), one after another, through the
    real pipeline; the latency of the events the Celery worker emits (``upload.forwarding``
    after its checks, ``upload.completed`` after the PACS confirmed), from the event's
    ``created_at`` (written in the worker right after the domain event, before its commit)
    to the page. Different studies each time: the PACS stores each one."""
    import base64

    import pydicom
    import pydicom.data
    from pydicom.uid import generate_uid

    source = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    headers = {"Authorization": f"Bearer {access}"}
    for _ in range(uploads):
        dataset = pydicom.dcmread(source)
        dataset.StudyInstanceUID = generate_uid()
        dataset.SeriesInstanceUID = generate_uid()
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
        init = requests.post(
            f"{base}/api/v1/upload/init",
            json={
                "chunk_size": 256 * 1024,
                "files": [
                    {
                        "name": "ct.dcm",
                        "size": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                ],
            },
            headers=headers,
            timeout=30,
        )
        init.raise_for_status()
        upload = init.json()
        token = {"Authorization": f"Bearer {upload['upload_token']}"}
        requests.put(
            f"{base}/api/v1/upload/{upload['upload_id']}/chunk?index=0",
            data=data,
            headers={
                **token,
                "Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode(),  # noqa: S324
                "Content-Type": "application/octet-stream",
            },
            timeout=30,
        ).raise_for_status()
        requests.post(
            f"{base}/api/v1/upload/{upload['upload_id']}/complete", headers=token, timeout=30
        ).raise_for_status()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = requests.get(
                f"{base}/api/v1/upload/{upload['upload_id']}/status", headers=token, timeout=30
            ).json()["state"]
            if state in ("completed", "failed"):
                break
            time.sleep(0.2)
    time.sleep(1.0)
    arrivals = page.evaluate("window.arrivals")
    out: dict[str, Any] = {"uploads": uploads}
    for transport in ("sse", "ws"):
        latencies = [
            arrived / 1000 - datetime.fromisoformat(created_at).timestamp()
            for event_id, (arrived, kind, created_at) in arrivals[transport].items()
            if event_id not in before[transport]
            and kind in ("upload.forwarding", "upload.completed")
            and created_at
        ]
        out[transport] = {
            "received": len(latencies),
            "p50": statistics.median(latencies) if latencies else float("nan"),
            "p95": _percentile(latencies, 0.95) if latencies else float("nan"),
            "max": max(latencies) if latencies else float("nan"),
        }
    return out


def measure(
    stack: ExitStack,
    root: Path,
    pacs: Any,
    *,
    label: str,
    events_count: int,
    worker_uploads: int,
    env: dict[str, str],
) -> dict[str, Any]:
    relay = servers.start_relay(stack, root / label, pacs, WEB_WORKERS="2", **env)
    login = requests.post(
        f"{relay.base}/api/v1/auth/login",
        json={"username": servers.BENCH_USERNAME, "password": servers.BENCH_PASSWORD},
        timeout=30,
    )
    login.raise_for_status()
    access = login.json()["access"]
    upload_id = _upload_for_events(relay.base, access)

    def ticket() -> str:
        answer = requests.post(
            f"{relay.base}/api/v1/notifications/ticket",
            headers={"Authorization": f"Bearer {access}"},
            timeout=30,
        )
        answer.raise_for_status()
        return str(answer.json()["ticket"])

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu"],
        )
        try:
            page = browser.new_page(base_url=relay.base)
            page.goto("/api/v1/health")
            ready = page.evaluate(PAGE_SCRIPT, [ticket(), ticket()])
            time.sleep(1.0)  # both web processes have joined the user's wake-ups
            load_before = os.getloadavg()[0]
            producer = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--produce",
                    upload_id,
                    "--events",
                    str(events_count),
                ],
                cwd=REPO,
                env=relay.env,
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
            emitted = json.loads(producer.stdout.strip().splitlines()[-1])
            deadline = time.monotonic() + 30
            arrivals: dict[str, dict[str, list[Any]]] = {}
            while time.monotonic() < deadline:
                arrivals = page.evaluate("window.arrivals")
                if all(len(arrivals[t]) >= events_count for t in ("sse", "ws")):
                    break
                time.sleep(0.2)
            synthetic = {t: dict(arrivals[t]) for t in ("sse", "ws")}
            worker = _real_uploads(
                relay.base,
                access,
                page,
                uploads=worker_uploads,
                before={t: set(synthetic[t]) for t in synthetic},
            )
            arrivals = synthetic
        finally:
            browser.close()
    out: dict[str, Any] = {"label": label, "load": load_before, "worker": worker}
    for transport in ("sse", "ws"):
        start = int(ready[transport])
        latencies = []
        for i, emitted_at in enumerate(emitted):
            arrived = arrivals[transport].get(str(start + i + 1))
            if arrived is not None:
                latencies.append(arrived[0] / 1000 - emitted_at)
        out[transport] = {
            "received": len(latencies),
            "p50": statistics.median(latencies) if latencies else float("nan"),
            "p95": _percentile(latencies, 0.95) if latencies else float("nan"),
            "max": max(latencies) if latencies else float("nan"),
        }
    return out


def section(results: list[dict[str, Any]], *, events_count: int, info: dict[str, str]) -> str:
    version = machine.code_version(REPO)
    lines = [
        f"## Live events latency, run of {datetime.now(UTC):%Y-%m-%d %H:%M} UTC (issue #12)",
        "",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram']} RAM, kernel "
        f"{info['kernel']}, Python {info['python']}. Code measured: {version}. "
        "The machine was shared with other work during the run (load average at the start of "
        "each measurement in the table): every figure is slower than on an idle machine.",
        f"{events_count} `upload.forwarding` domain events, {EVENT_INTERVAL_SECONDS:g} s apart, "
        "emitted by a separate process on the product's database (the Celery worker's code "
        "path); received by one Chromium page holding an EventSource and a WebSocket (each "
        "on whichever of the two uvicorn web processes accepted it). Latency: emit -> message "
        "in the page.",
        "",
        "| Setup | Transport | Received | p50 | p95 | max | Goal p95 < 1 s | Load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for transport, name in (("sse", "SSE (EventSource)"), ("ws", "WebSocket")):
            figures = result[transport]
            met = "met" if figures["p95"] < GOAL_P95_SECONDS else "**not met**"
            lines.append(
                f"| {result['label']} | {name} | {figures['received']}/{events_count} | "
                f"{figures['p50'] * 1000:.0f} ms | {figures['p95'] * 1000:.0f} ms | "
                f"{figures['max'] * 1000:.0f} ms | {met} | {result['load']:.2f} |"
            )
    lines += [
        "",
        "The same page during real one-image uploads, one after another, through the whole "
        "pipeline (the Celery worker checks each and sends it to Orthanc): the events the "
        "worker emits (`upload.forwarding`, `upload.completed`), from the event's `created_at` "
        "(written in the worker just after the domain event, before its commit) to the page.",
        "",
        "| Setup | Transport | Events (uploads) | p50 | p95 | max | Goal p95 < 1 s |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        worker = result["worker"]
        for transport, name in (("sse", "SSE (EventSource)"), ("ws", "WebSocket")):
            figures = worker[transport]
            met = "met" if figures["p95"] < GOAL_P95_SECONDS else "**not met**"
            lines.append(
                f"| {result['label']} | {name} | {figures['received']} ({worker['uploads']}) | "
                f"{figures['p50'] * 1000:.0f} ms | {figures['p95'] * 1000:.0f} ms | "
                f"{figures['max'] * 1000:.0f} ms | {met} |"
            )
    lines += [
        "",
        "Embedded default: each web process asks the database for the newest event number of "
        "its connected users every NOTIFICATIONS_POLL_SECONDS (0.2 s), so about 0.1 s of the "
        "median is that wait. With Redis the wake-up is a channels-redis group message sent "
        "after commit; the database check (every 5 s there) is only the safety net.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--worker-uploads", type=int, default=WORKER_UPLOADS)
    parser.add_argument("--produce", metavar="UPLOAD_ID", help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL))
    parser.add_argument("--keep-temp", action="store_true")
    args = parser.parse_args()
    if args.produce:
        produce(upload_id=args.produce, count=args.events, interval=EVENT_INTERVAL_SECONDS)
        return
    info = machine.machine_info()
    root = Path(tempfile.mkdtemp(prefix="relaypacs-bench-live-"))
    results = []
    try:
        with ExitStack() as stack:
            pacs = servers.start_orthanc(stack, root / "orthanc", name="BENCH_LIVE")
            setups = [("embedded default (SQLite, no Redis)", {})]
            if not args.no_redis and _redis_up(args.redis_url):
                setups.append(("Redis (channels-redis), SQLite", {"REDIS_URL": args.redis_url}))
            elif not args.no_redis:
                print(
                    f"Redis at {args.redis_url} does not answer: measuring the embedded default only"
                )
            for label, env in setups:
                print(f"measuring: {label}", flush=True)
                with ExitStack() as one:
                    result = measure(
                        one,
                        root,
                        pacs,
                        label=label,
                        events_count=args.events,
                        worker_uploads=args.worker_uploads,
                        env=env,
                    )
                results.append(result)
                print(json.dumps(result), flush=True)
    finally:
        if not args.keep_temp:
            shutil.rmtree(root, ignore_errors=True)
    text = section(results, events_count=args.events, info=info)
    print(text)
    if not args.no_record:
        with RESULTS.open("a") as out:
            out.write("\n" + text)


if __name__ == "__main__":
    main()
