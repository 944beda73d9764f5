"""Chunk ingest under two production ASGI servers, directly and behind the shipped nginx
conf, against nginx's WebDAV PUT of the same chunks (issue 17, "Speed and load").

The cases are uvicorn (what ``manage.py serve`` runs) and granian, each with two worker
processes (one per core, as ``serve`` starts the web server), each reached directly and
through ``deploy/nginx/relaypacs.conf`` (as shipped except for the upstream, the listen
address and the certificate and log paths; it listens on plain HTTP/1.1 here, like the
WebDAV yardstick, so both sides skip TLS alike). Everything runs at once on one migrated
DATA_DIR and is measured in alternating rounds: a WebDAV round, a case, a WebDAV round,
the next case, ..., the cases in reverse order in the second round, so that a drift in
disk speed or machine load hits every case alike. Each case's ratio is to the WebDAV
rounds just before and after it. CPU per chunk counts the web server's processes and,
behind nginx, the proxy's too.

Called by ``run_all.py``; alone: ``.venv/bin/python bench/ingest_servers.py [--quick]``
prints the table without recording it.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import requests  # noqa: E402

from bench import clients, servers, studies, variants  # noqa: E402
from bench.usage import CpuMeter, MeteredTransfer, own_cpu_seconds  # noqa: E402

NGINX_SITE = REPO / "deploy" / "nginx" / "relaypacs.conf"
# Two worker processes, one per core: what ``serve`` starts by default (WEB_WORKERS).
WORKERS = "2"
WEB_SERVERS = {
    "uvicorn": [
        sys.executable,
        "-m",
        "uvicorn",
        "relaypacs.asgi:application",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--no-access-log",
        "--workers",
        WORKERS,
    ],
    "granian": [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--no-access-log",
        "--workers",
        WORKERS,
        "relaypacs.asgi:application",
    ],
}
# Alternating rounds: every case twice, the second time in reverse order.
ROUNDS = 2
# The main bench's study has 256 instances of 4 MiB; half of it per round (541 MB).
INSTANCES = 128
QUICK_INSTANCES = 16


@dataclass(frozen=True)
class Case:
    """One way of reaching one web server."""

    server: str
    proxied: bool

    @property
    def name(self) -> str:
        return f"{self.server}{' behind nginx (shipped conf)' if self.proxied else ', direct'}"


@dataclass
class CaseResult:
    """A case's rounds and the WebDAV rounds around each of them."""

    case: Case
    rounds: list[MeteredTransfer]
    yardstick: list[MeteredTransfer]
    proxy_cpu: float = 0.0  # of server_cpu, the share of nginx in front
    note: str = ""

    @property
    def pooled(self) -> MeteredTransfer:
        return variants.pooled(self.rounds)

    @property
    def ratio(self) -> float:
        return self.pooled.transfer.mb_per_s / variants.pooled(self.yardstick).transfer.mb_per_s


def _render_site(*, upstream: int, port: int, directory: Path) -> Path:
    """The shipped site conf pointed at ``upstream``, listening on plain HTTP ``port``."""
    text = NGINX_SITE.read_text()
    cert, key = directory / "bench.crt", directory / "bench.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    for old, new in (
        ("server web:8000;", f"server 127.0.0.1:{upstream};"),
        ("listen 80;", f"listen 127.0.0.1:{servers.free_ports(1)[0]};"),
        ("listen [::]:80;", ""),
        ("listen 443 ssl http2;", f"listen 127.0.0.1:{port};"),
        ("listen [::]:443 ssl http2;", ""),
        ("/etc/nginx/certs/relaypacs.crt", str(cert)),
        ("/etc/nginx/certs/relaypacs.key", str(key)),
        ("/var/log/nginx/relaypacs-access.log", str(directory / "access.log")),
    ):
        if text.count(old) != 1:
            raise RuntimeError(f"deploy/nginx/relaypacs.conf no longer has {old!r} once")
        text = text.replace(old, new)
    site = directory / "relaypacs.conf"
    site.write_text(text)
    return site


def start_proxy(stack: ExitStack, directory: Path, *, upstream: int) -> servers.Nginx:
    """Debian's nginx with the shipped site conf in front of 127.0.0.1:``upstream``."""
    directory.mkdir(parents=True, exist_ok=True)
    (port,) = servers.free_ports(1)
    site = _render_site(upstream=upstream, port=port, directory=directory)
    user = "user root;" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(
        f"""{user}
worker_processes auto;
daemon off;
pid {directory / "nginx.pid"};
error_log {directory / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    access_log off;
    client_body_temp_path {directory / "body"};
    proxy_temp_path {directory / "proxy"};
    fastcgi_temp_path {directory / "fastcgi"};
    uwsgi_temp_path {directory / "uwsgi"};
    scgi_temp_path {directory / "scgi"};
    include {site};
}}
"""
    )
    log = directory / "stdout.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(directory)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack.callback(servers.stop_process, process, own_group=True)
    servers.wait_until(
        lambda: requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).ok,
        what="nginx in front",
        process=process,
        log=directory / "error.log",
    )
    return servers.Nginx(port=port, root=directory, pid=process.pid)


def _metered(
    pids: dict[str, int], send: Callable[[], clients.Transfer]
) -> tuple[MeteredTransfer, float]:
    """``send()`` with the CPU of every named process tree summed; also nginx's share."""
    client_before = own_cpu_seconds()
    with CpuMeter(pids) as meter:
        transfer = send()
    client = own_cpu_seconds() - client_before
    total = sum(meter.seconds.values())
    return MeteredTransfer(transfer, total, client), meter.seconds.get("proxy", 0.0)


def measure(
    directory: Path,
    paths: list[Path],
    yardstick: servers.Nginx,
    pacs: servers.Orthanc,
    quiesce: Callable[[], None],
    log: Callable[[str], None],
) -> list[CaseResult]:
    """Every case in alternating rounds against ``yardstick`` (nginx WebDAV PUT)."""
    directory.mkdir(parents=True, exist_ok=True)
    base_env = servers.prepare_data_dir(directory / "data", pacs)
    missing = [s for s in WEB_SERVERS if importlib.util.find_spec(s) is None]
    cases = [Case(s, proxied) for s in WEB_SERVERS if s not in missing for proxied in (False, True)]
    results = {case: CaseResult(case, [], []) for case in cases}
    with ExitStack() as stack:
        targets: dict[Case, tuple[int, dict[str, int], clients.RelayClient]] = {}
        for name in WEB_SERVERS:
            if name in missing:
                continue
            web = servers.start_web_only(
                stack, base_env, WEB_SERVERS[name], directory / f"{name}.log"
            )
            proxy = start_proxy(stack, directory / f"nginx-{name}", upstream=web.port)
            for case in (Case(name, False), Case(name, True)):
                port = proxy.port if case.proxied else web.port
                pids = {"web": web.process.pid, **({"proxy": proxy.pid} if case.proxied else {})}
                client = clients.RelayClient(
                    f"http://127.0.0.1:{port}", port, servers.BENCH_USERNAME, servers.BENCH_PASSWORD
                )
                targets[case] = (port, pids, client)
        previous = variants.nginx_metered(yardstick, paths, "servers-0", quiesce)
        for number in range(ROUNDS):
            for case in cases if number % 2 == 0 else list(reversed(cases)):
                log(f"ingest servers, round {number + 1}: {case.name}")
                _port, pids, client = targets[case]
                upload = client.init(paths)
                quiesce()
                send = functools.partial(client.send_chunks, upload, paths)
                measured, proxy_cpu = _metered(pids, send)
                client.cancel(upload)
                after = variants.nginx_metered(
                    yardstick, paths, f"servers-{number}-{case.name[:7]}", quiesce
                )
                result = results[case]
                result.rounds.append(measured)
                result.yardstick += [previous, after]
                result.proxy_cpu += proxy_cpu
                previous = after
    skipped = [
        CaseResult(Case(s, False), [], [], note=f"skipped: {s} is not installed") for s in missing
    ]
    return [*results.values(), *skipped]


def report(results: list[CaseResult]) -> list[str]:
    """Markdown lines: one row per case."""
    measured = [r for r in results if r.rounds]
    size = measured[0].rounds[0].transfer.bytes if measured else 0
    lines = [
        f"Ingest of {size / 1e6:.0f} MB per round under two ASGI servers (2 workers each), "
        "directly and behind `deploy/nginx/relaypacs.conf` (plain HTTP here, like the "
        f"yardstick); {ROUNDS} alternating rounds, each case's ratio to the nginx WebDAV "
        "PUT rounds just before and after it (`bench/ingest_servers.py`; CPU = user+system "
        "ms per 1 MiB chunk):",
        "",
        "| Case | MB/s (rounds) | WebDAV PUT MB/s | Ratio | Server CPU/chunk (of it nginx) | Client CPU/chunk |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        if not r.rounds:
            lines.append(f"| {r.case.server} | {r.note} | | | | |")
            continue
        pooled = r.pooled
        rounds = " / ".join(f"{m.transfer.mb_per_s:.0f}" for m in r.rounds)
        proxy = f" ({1000 * r.proxy_cpu / pooled.transfer.requests:.1f})" if r.case.proxied else ""
        lines.append(
            f"| {r.case.name} | {pooled.transfer.mb_per_s:.0f} ({rounds}) "
            f"| {variants.pooled(r.yardstick).transfer.mb_per_s:.0f} | **{r.ratio:.2f}x** "
            f"| {pooled.server_ms_per_request:.1f} ms{proxy} | {pooled.client_ms_per_request:.1f} ms |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Measure the cases and print the table (nothing recorded)."""
    from bench import run_all

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small study: checks the bench")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="relaypacs-servers-", dir="/tmp") as tmp,
        ExitStack() as stack,
    ):
        root = Path(tmp)
        study = studies.make_study(
            root / "study", instances=QUICK_INSTANCES if args.quick else INSTANCES
        )
        pacs = servers.start_orthanc(stack, root / "orthanc", name="BENCH_SERVERS")
        yardstick = servers.start_nginx(stack, root / "nginx-put")
        results = measure(
            root / "servers", study.paths, yardstick, pacs, run_all._quiesce, run_all.log
        )
        shutil.rmtree(study.paths[0].parent, ignore_errors=True)
    print("\n".join(report(results)))
    print(f"({(time.monotonic() - started) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
