"""Benchmark of the live stream under load (issue 13): 1,000 concurrent stream connections
(half WebSocket, half Server-Sent Events) held by the product as ``manage.py serve``
starts it (``make run``: two uvicorn web processes, a Celery worker and beat, the embedded
default: SQLite, no Redis), and what they cost: memory per connection and the event
latency while they are all connected.

Setup: USERS users (a separate ``manage.py shell``-like process on the product's
database makes them, one upload each, and one signed-in device session and access token
per connection: what a real sign-in makes), CONNECTIONS / USERS connections per user,
half of each user's on each transport; every connection authenticates with
``Authorization: Bearer`` as the PWA's first connect does, and waits for its ``ready``.

Memory: the resident memory (RSS, psutil) of the web processes (the uvicorn master and
its workers, which hold the connections) after a warm-up, and again when all are
connected and settled; the difference divided by the number of connections. The whole
``serve`` process tree is reported beside it.

Latency: EVENTS ``upload.forwarding`` domain events emitted by a separate process on the
product's database (the Celery worker's code path: ``events.emit`` -> notifications
subscriber -> ``event_append`` -> commit -> wake-up), EVENT_INTERVAL_SECONDS apart, each to
the next user in turn, so each reaches that user's connections; the clock starts just
before ``emit`` and stops when a connection has parsed the message (same machine, same
clock). Then a burst: one event to every user at once, as fast as the producer can
append them (every connection gets one message within about a second).

The clients are one asyncio process (aiohttp, uvloop) on the same 2-core machine as the
server: their own delay is part of every figure.

Usage: ``.venv/bin/python bench/notifications_connections.py [--connections N]
[--users N] [--events N] [--no-record] [--redis-url URL] [--keep-temp]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import machine, servers  # noqa: E402

RESULTS = REPO / "bench" / "RESULTS.md"
CONNECTIONS = 1000
# 10 connections (devices, tabs) per user: a clinic's technicians each with a phone and a
# workstation or two; every event then reaches ten connections.
USERS = 100
EVENTS = 300
# Far apart enough that each event is measured on its own, close enough for half a minute.
EVENT_INTERVAL_SECONDS = 0.1
# Connections opened at most this many at a time (a clinic does not open 1,000 at once;
# the product's authentication threads would just queue them).
OPEN_CONCURRENCY = 50
# All connected: wait this long before measuring memory, so that lazily made per-process
# state (the hub's tasks, first session checks) is there.
SETTLE_SECONDS = 12
GOAL_P95_SECONDS = 1.0
GOAL_BYTES_PER_CONNECTION = 50 * 1024
# Each connection needs a socket in this process and one in the server: raise the limit.
FILE_LIMIT = 8192


def _raise_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FILE_LIMIT if hard == resource.RLIM_INFINITY else min(FILE_LIMIT, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- the product side (run in processes with the product's environment) ---------------


def setup_users(*, users: int, per_user: int) -> None:
    """Users, one upload each, and one device session + access token per connection;
    prints ``[{"user_id", "upload_id", "tokens": [...]}, ...]``."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relaypacs.settings.dev")
    django.setup()
    from django.contrib.auth.hashers import make_password
    from rest_framework_simplejwt.tokens import RefreshToken

    from accounts.models import AuthSession, Facility, User
    from uploads.models import UploadSession, UploadState

    facility = Facility.objects.create(name="Bench clinic")
    password = make_password(None)  # unusable: these users never sign in with a password
    made = User.objects.bulk_create(
        [
            User(username=f"bench-live-{i}", password=password, facility=facility)
            for i in range(users)
        ]
    )
    out = []
    for user in made:
        upload = UploadSession.objects.create(
            owner=user,
            facility=facility,
            state=UploadState.FORWARDING,
            total_size=1000,
            chunk_size=256 * 1024,
            total_chunks=1,
        )
        sessions = AuthSession.objects.bulk_create(
            [AuthSession(user=user, user_agent="bench") for _ in range(per_user)]
        )
        tokens = []
        for session in sessions:
            refresh = RefreshToken.for_user(user)
            refresh["sid"] = str(session.id)
            tokens.append(str(refresh.access_token))
        out.append({"user_id": user.pk, "upload_id": str(upload.id), "tokens": tokens})
    print(json.dumps(out))


def produce(*, upload_ids: list[str], count: int, interval: float) -> None:
    """``count`` domain events, to the uploads in turn (interval 0: a burst); prints
    ``[[upload_id, emitted_at], ...]``."""
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "relaypacs.settings.dev")
    django.setup()
    from relaypacs import events

    emitted: list[tuple[str, float]] = []
    for i in range(count):
        upload_id = upload_ids[i % len(upload_ids)]
        started = time.time()
        events.emit(events.UPLOAD_FORWARDING, upload_id=upload_id)
        emitted.append((upload_id, started))
        if interval:
            time.sleep(max(0.0, interval - (time.time() - started)))
    print(json.dumps(emitted))


# --- the clients ------------------------------------------------------------------------


@dataclass
class Connection:
    transport: str
    upload_id: str
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # (upload_id, arrival time) of each upload.forwarding event, in order.
    arrivals: list[tuple[str, float]] = field(default_factory=list)
    closed: str = ""

    def take(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ready":
            self.ready.set()
        elif kind == "upload.forwarding":
            self.arrivals.append((str(message.get("upload_id")), time.time()))
        elif kind in ("closed", "error"):
            self.closed = str(message.get("reason") or message.get("error"))


async def _hold_ws(session: Any, base: str, token: str, conn: Connection) -> None:
    import aiohttp

    url = base.replace("http://", "ws://") + "/ws/notifications"
    try:
        async with session.ws_connect(
            url,
            headers={"Authorization": f"Bearer {token}"},
            heartbeat=None,
            max_msg_size=0,
            compress=15,  # offer permessage-deflate, as browsers do
        ) as ws:
            await ws.send_str(json.dumps({"type": "resume", "after": None}))
            async for message in ws:
                if message.type == aiohttp.WSMsgType.TEXT:
                    conn.take(json.loads(message.data))
                elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
            conn.closed = conn.closed or f"websocket closed {ws.close_code}"
    except Exception as exc:  # noqa: BLE001 - counted as a lost connection
        conn.closed = f"{type(exc).__name__}: {exc}"


async def _hold_sse(session: Any, base: str, token: str, conn: Connection) -> None:
    import aiohttp

    try:
        async with session.get(
            f"{base}/api/v1/notifications/stream",
            headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        ) as response:
            if response.status != 200:
                conn.closed = f"HTTP {response.status}"
                return
            async for raw in response.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data: "):
                    conn.take(json.loads(line[6:]))
            conn.closed = conn.closed or "stream ended"
    except Exception as exc:  # noqa: BLE001 - counted as a lost connection
        conn.closed = f"{type(exc).__name__}: {exc}"


def _web_processes(serve_pid: int) -> list[Any]:
    """The uvicorn master and its worker processes (multiprocessing children) under
    ``serve``."""
    import psutil

    tree = psutil.Process(serve_pid).children(recursive=True)
    masters = [p for p in tree if "uvicorn" in " ".join(p.cmdline())]
    return [*masters, *(child for m in masters for child in m.children(recursive=True))]


def _rss(processes: list[Any]) -> int:
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except Exception:  # noqa: BLE001,S112 - a process that ended counts nothing
            continue
    return total


def _cpu(processes: list[Any]) -> float:
    """CPU seconds (user + system) the processes have used so far."""
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except Exception:  # noqa: BLE001,S112 - a process that ended counts nothing
            continue
    return total


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _figures(latencies: list[float]) -> dict[str, float | int]:
    if not latencies:
        return {"n": 0, "p50": float("nan"), "p95": float("nan"), "max": float("nan")}
    return {
        "n": len(latencies),
        "p50": statistics.median(latencies),
        "p95": _percentile(latencies, 0.95),
        "max": max(latencies),
    }


def _latencies(
    connections: list[Connection], emitted: list[list[Any]], offsets: dict[int, int]
) -> tuple[list[float], int]:
    """Each connection's k-th arrival (after ``offsets``) is its user's k-th emitted event;
    returns the latencies and how many (connection, event) pairs never arrived."""
    by_upload: dict[str, list[float]] = {}
    for upload_id, emitted_at in emitted:
        by_upload.setdefault(upload_id, []).append(float(emitted_at))
    latencies: list[float] = []
    missing = 0
    for conn in connections:
        sent = by_upload.get(conn.upload_id, [])
        got = conn.arrivals[offsets.get(id(conn), 0) :]
        for k, emitted_at in enumerate(sent):
            if k < len(got):
                latencies.append(got[k][1] - emitted_at)
            else:
                missing += 1
    return latencies, missing


async def _run_clients(
    relay: Any, setup: list[dict[str, Any]], *, events_count: int, label: str
) -> dict[str, Any]:
    import aiohttp

    serve_pid = relay.process.pid
    web = _web_processes(serve_pid)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Warm-up: a few connections of each kind, so the processes' lazy imports, thread
        # pools and hub are made before the baseline.
        warm = [Connection("ws", setup[0]["upload_id"]), Connection("sse", setup[0]["upload_id"])]
        warm_tasks = [
            asyncio.ensure_future(_hold_ws(session, relay.base, setup[0]["tokens"][0], warm[0])),
            asyncio.ensure_future(_hold_sse(session, relay.base, setup[0]["tokens"][1], warm[1])),
        ]
        await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in warm)), 120)
        for task in warm_tasks:
            task.cancel()
        await asyncio.sleep(3)
        web = _web_processes(serve_pid)
        import psutil

        everything = [psutil.Process(serve_pid), *psutil.Process(serve_pid).children(True)]
        rss_before, tree_before = _rss(web), _rss(everything)

        connections: list[Connection] = []
        holders: list[asyncio.Task[None]] = []
        gate = asyncio.Semaphore(OPEN_CONCURRENCY)
        opened_at = time.monotonic()

        async def open_one(transport: str, upload_id: str, token: str) -> None:
            conn = Connection(transport, upload_id)
            connections.append(conn)
            hold = _hold_ws if transport == "ws" else _hold_sse
            async with gate:
                holders.append(asyncio.ensure_future(hold(session, relay.base, token, conn)))
                ready = asyncio.ensure_future(conn.ready.wait())
                await asyncio.wait({ready, holders[-1]}, timeout=120, return_when="FIRST_COMPLETED")
                ready.cancel()

        # All WebSockets first, then all SSE streams: the memory of each transport.
        rss_by_transport: dict[str, int] = {}
        for wanted in ("ws", "sse"):
            before_transport = _rss(_web_processes(serve_pid))
            openers = []
            for user in setup:
                for k, token in enumerate(user["tokens"]):
                    transport = "ws" if k % 2 == 0 else "sse"
                    if transport == wanted:
                        openers.append(open_one(transport, user["upload_id"], token))
            await asyncio.gather(*openers)
            await asyncio.sleep(SETTLE_SECONDS / 2)
            rss_by_transport[wanted] = _rss(_web_processes(serve_pid)) - before_transport
        open_seconds = time.monotonic() - opened_at
        connected = sum(c.ready.is_set() and not c.closed for c in connections)
        print(
            f"{label}: {connected}/{len(connections)} connected in {open_seconds:.1f} s", flush=True
        )
        await asyncio.sleep(SETTLE_SECONDS)
        web = _web_processes(serve_pid)
        everything = [psutil.Process(serve_pid), *psutil.Process(serve_pid).children(True)]
        rss_after, tree_after = _rss(web), _rss(everything)
        fds = sum(p.num_fds() for p in web)

        upload_ids = [u["upload_id"] for u in setup]
        load_before = os.getloadavg()
        web_cpu_before, client_cpu_before = _cpu(web), _own_cpu()
        spaced = await _produce(
            relay, upload_ids, count=events_count, interval=EVENT_INTERVAL_SECONDS
        )
        await _drain(connections, spaced, timeout=30)
        web_cpu, client_cpu = _cpu(web) - web_cpu_before, _own_cpu() - client_cpu_before
        spaced_latencies, spaced_missing = _latencies(connections, spaced, {})
        offsets = {id(c): len(c.arrivals) for c in connections}
        burst = await _produce(relay, upload_ids, count=len(upload_ids), interval=0)
        await _drain(connections, spaced + burst, timeout=30)
        burst_latencies, burst_missing = _latencies(connections, burst, offsets)
        load_after = os.getloadavg()
        still = sum(c.ready.is_set() and not c.closed for c in connections)
        lost = sorted({c.closed for c in connections if c.closed})[:5]
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
    per_transport = {}
    for transport in ("ws", "sse"):
        subset = [c for c in connections if c.transport == transport]
        per_transport[transport] = _figures(_latencies(subset, spaced, {})[0])
    return {
        "label": label,
        "connections": len(connections),
        "connected": connected,
        "still_connected": still,
        "lost_reasons": lost,
        "open_seconds": open_seconds,
        "web_processes": len(web),
        "web_fds": fds,
        "rss_ws": rss_by_transport["ws"],
        "rss_sse": rss_by_transport["sse"],
        "web_cpu_seconds": web_cpu,
        "client_cpu_seconds": client_cpu,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "tree_before": tree_before,
        "tree_after": tree_after,
        "events": events_count,
        "spaced": _figures(spaced_latencies),
        "spaced_missing": spaced_missing,
        "by_transport": per_transport,
        "burst_events": len(upload_ids),
        "burst": _figures(burst_latencies),
        "burst_missing": burst_missing,
        "load_before": load_before,
        "load_after": load_after,
    }


async def _produce(relay: Any, upload_ids: list[str], *, count: int, interval: float) -> list[Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).resolve()),
        "--produce",
        ",".join(upload_ids),
        "--events",
        str(count),
        "--interval",
        str(interval),
        cwd=REPO,
        env={**relay.env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"producer failed: {err.decode()[-2000:]}")
    return list(json.loads(out.decode().strip().splitlines()[-1]))


async def _drain(connections: list[Connection], emitted: list[Any], *, timeout: float) -> None:
    """Wait until every connection has an arrival for each of its user's events."""
    wanted: dict[str, int] = {}
    for upload_id, _ in emitted:
        wanted[upload_id] = wanted.get(upload_id, 0) + 1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len(c.arrivals) >= wanted.get(c.upload_id, 0) or c.closed for c in connections):
            return
        await asyncio.sleep(0.2)


def measure(
    stack: ExitStack,
    root: Path,
    pacs: Any,
    *,
    label: str,
    connections: int,
    users: int,
    events_count: int,
    env: dict[str, str],
) -> dict[str, Any]:
    relay = servers.start_relay(stack, root / label.split()[0], pacs, **env)
    per_user = max(1, connections // users)
    setup_run = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--setup",
            str(users),
            "--per-user",
            str(per_user),
        ],
        cwd=REPO,
        env={**relay.env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if setup_run.returncode != 0:
        raise RuntimeError(f"setup failed: {setup_run.stderr[-3000:]}")
    setup = json.loads(setup_run.stdout.strip().splitlines()[-1])
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvicorn[standard] ships it
        pass
    result = asyncio.run(_run_clients(relay, setup, events_count=events_count, label=label))
    result["serve_log_errors"] = sum(
        1 for line in relay.log.read_text(errors="replace").splitlines() if " ERROR " in line
    )
    return result


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def section(results: list[dict[str, Any]], *, info: dict[str, str], uptime: str) -> str:
    version = machine.code_version(REPO)
    lines = [
        f"## Live events: 1,000 connections (issue 13), run of {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram']} RAM, kernel "
        f"{info['kernel']}, Python {info['python']}. Code measured: {version}. "
        f"`uptime` at the start: {uptime}. The machine was shared with other work (load "
        "averages below): every figure is slower than on an idle machine.",
        "",
        "`manage.py serve` as `make run` starts it (two uvicorn web processes, Celery worker "
        "and beat). Connections: half WebSocket, half SSE, "
        f"{results[0]['connections'] // USERS if results else 10} per user (each its own "
        "device session and access token, `Authorization: Bearer`), held by one asyncio "
        "client process (aiohttp) on the same machine. Memory: RSS of the uvicorn processes "
        "after a warm-up and again with all connections open (settled "
        f"{SETTLE_SECONDS} s); per connection = the difference / connections. Latency: "
        "`upload.forwarding` domain events emitted by a separate process on the product's "
        f"database (the worker's code path), {EVENT_INTERVAL_SECONDS:g} s apart to the users "
        "in turn, from just before `emit` to the message parsed by each of that user's "
        "connections; then a burst of one event to every user at once.",
        "",
        "| Setup | Connected (held to the end) | Opened in | Web RSS before -> after | "
        "Per connection | Goal < 50 KB | WebSocket / SSE each | Whole `serve` tree "
        "before -> after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        per = (r["rss_after"] - r["rss_before"]) / max(1, r["connected"])
        half = max(1, r["connections"] // 2)
        met = "met" if per < GOAL_BYTES_PER_CONNECTION else "**not met**"
        lines.append(
            f"| {r['label']} | {r['connected']}/{r['connections']} ({r['still_connected']}) | "
            f"{r['open_seconds']:.1f} s | {r['rss_before'] / 2**20:.0f} -> "
            f"{r['rss_after'] / 2**20:.0f} MiB ({r['web_processes']} processes) | "
            f"{per / 1024:.1f} KB | {met} | {r['rss_ws'] / half / 1024:.1f} KB / "
            f"{r['rss_sse'] / half / 1024:.1f} KB | {r['tree_before'] / 2**20:.0f} -> "
            f"{r['tree_after'] / 2**20:.0f} MiB |"
        )
    lines += [
        "",
        "| Setup | Events | Deliveries (missing) | p50 | p95 | max | Goal p95 < 1 s | "
        "Load (1 min) during |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for name, key, missing in (
            (f"{r['events']} spaced", "spaced", r["spaced_missing"]),
            (f"burst of {r['burst_events']}", "burst", r["burst_missing"]),
        ):
            f = r[key]
            met = "met" if f["p95"] < GOAL_P95_SECONDS else "**not met**"
            lines.append(
                f"| {r['label']} | {name} | {f['n']} ({missing}) | {_ms(f['p50'])} | "
                f"{_ms(f['p95'])} | {_ms(f['max'])} | {met} | "
                f"{r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f} |"
            )
        for transport, name in (("ws", "WebSocket"), ("sse", "SSE")):
            f = r["by_transport"][transport]
            lines.append(
                f"| {r['label']} | spaced, {name} only | {f['n']} | {_ms(f['p50'])} | "
                f"{_ms(f['p95'])} | {_ms(f['max'])} | | |"
            )
    lines.append("")
    for r in results:
        deliveries = max(1, r["spaced"]["n"])
        lines.append(
            f"{r['label']}: during the spaced events the web processes used "
            f"{r['web_cpu_seconds']:.1f} CPU s ({r['web_cpu_seconds'] / deliveries * 1000:.2f} ms "
            f"per delivery, heartbeats and session checks of all connections included) and "
            f"the client {r['client_cpu_seconds']:.1f} CPU s, over "
            f"{r['events'] * EVENT_INTERVAL_SECONDS:.0f} s of events (the product's own cost, "
            "whatever the machine's load)."
        )
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--users", type=int, default=USERS)
    parser.add_argument("--events", type=int, default=EVENTS)
    parser.add_argument("--interval", type=float, default=EVENT_INTERVAL_SECONDS)
    parser.add_argument("--setup", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--per-user", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--produce", metavar="UPLOAD_IDS", help=argparse.SUPPRESS)
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", ""),
        help="also measure with REDIS_URL (channels-redis wake-ups)",
    )
    parser.add_argument("--keep-temp", action="store_true")
    args = parser.parse_args()
    if args.setup:
        setup_users(users=args.setup, per_user=args.per_user)
        return
    if args.produce:
        produce(upload_ids=args.produce.split(","), count=args.events, interval=args.interval)
        return
    limit = _raise_file_limit()
    if limit < 2 * args.connections + 200:
        raise SystemExit(f"open files limited to {limit}: raise `ulimit -n` and run again")
    info = machine.machine_info()
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    root = Path(tempfile.mkdtemp(prefix="relaypacs-bench-connections-"))
    results = []
    try:
        with ExitStack() as stack:
            pacs = servers.start_orthanc(stack, root / "orthanc", name="BENCH_CONN")
            setups: list[tuple[str, dict[str, str]]] = [("embedded default (SQLite, no Redis)", {})]
            if args.redis_url:
                setups.append(("Redis (channels-redis), SQLite", {"REDIS_URL": args.redis_url}))
            for label, env in setups:
                print(f"measuring: {label}", flush=True)
                with ExitStack() as one:
                    result = measure(
                        one,
                        root,
                        pacs,
                        label=label,
                        connections=args.connections,
                        users=args.users,
                        events_count=args.events,
                        env=env,
                    )
                results.append(result)
                print(json.dumps(result), flush=True)
    finally:
        if not args.keep_temp:
            shutil.rmtree(root, ignore_errors=True)
    text = section(results, info=info, uptime=uptime)
    print(text)
    if not args.no_record:
        with RESULTS.open("a") as out:
            out.write("\n" + text)


if __name__ == "__main__":
    main()
