"""Chunk ingest with other web servers and settings than the ones ``make run`` uses.

Only the web server runs (chunk PUTs need no Celery worker), on a DATA_DIR migrated
once; each variant is bracketed by nginx rounds of the same chunks, so every ratio
compares figures taken within seconds of each other. The CPU time of the server's
processes and of the client per chunk shows where a 2-core machine spends its time.
gunicorn is not a dependency of RelayPACS: its variants run only where it is installed.
"""

from __future__ import annotations

import functools
import importlib.util
import shutil
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from bench import clients, servers
from bench.usage import MeteredTransfer, RssSampler, metered
from pacs.local_orthanc import LocalOrthanc

UVICORN = [
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
]
GUNICORN_GTHREAD = [
    sys.executable,
    "-m",
    "gunicorn",
    "relaypacs.wsgi:application",
    "-k",
    "gthread",
    "--threads",
    "8",
    "-w",
    "2",
    "-b",
    "127.0.0.1:{port}",
]
FLOOR = [
    sys.executable,
    "-m",
    "uvicorn",
    "bench.floor_app:app",
    "--host",
    "127.0.0.1",
    "--port",
    "{port}",
    "--no-access-log",
    "--workers",
    "2",
]


@dataclass(frozen=True)
class Variant:
    """A web server command line (``{port}`` filled in) and the environment it runs with."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    needs: str = ""  # a module that must be importable, else the variant is skipped
    floor: bool = False  # bench/floor_app.py instead of RelayPACS
    chunk_size: int = clients.CHUNK_SIZE  # for RelayPACS and nginx alike
    credential: str = "upload"  # the upload token (the PWA's) or "access" (the owner's token)
    in_flight: int = clients.IN_FLIGHT  # for RelayPACS and nginx alike
    keep_alive: bool = True  # False: a new connection per chunk, for RelayPACS and nginx alike


VARIANTS = [
    Variant("uvicorn --workers 2 (ASGI, as make run)", [*UVICORN, "2"]),
    Variant("uvicorn --workers 1", [*UVICORN, "1"]),
    Variant("uvicorn --workers 4", [*UVICORN, "4"]),
    # The default flushes once at complete; this is the per-chunk flush it replaced.
    Variant(
        "uvicorn --workers 2, chunks sent with the access token (not the upload token)",
        [*UVICORN, "2"],
        credential="access",
    ),
    Variant("uvicorn --workers 2, 1 chunk in flight (nginx too)", [*UVICORN, "2"], in_flight=1),
    # A client that opens a connection per chunk (no keep-alive): the connection's set-up
    # and close are Python's work in uvicorn, C's in nginx.
    Variant(
        "uvicorn --workers 2, a new connection per chunk (nginx too)",
        [*UVICORN, "2"],
        keep_alive=False,
    ),
    Variant("uvicorn --workers 2, UPLOAD_FSYNC=chunk", [*UVICORN, "2"], {"UPLOAD_FSYNC": "chunk"}),
    Variant(
        "uvicorn --workers 2, only Security+Common middleware",
        [*UVICORN, "2"],
        {"DJANGO_SETTINGS_MODULE": "bench.settings_lean_api"},
    ),
    Variant("gunicorn gthread -w 2 --threads 8 (WSGI)", GUNICORN_GTHREAD, needs="gunicorn"),
    Variant(
        "uvicorn --workers 2, 4 MiB chunks (not the PWA's size: shows the per-request cost)",
        [*UVICORN, "2"],
        chunk_size=4 * 1024 * 1024,
    ),
    Variant(
        "gunicorn gthread -w 2 --threads 8, CONN_MAX_AGE=60",
        GUNICORN_GTHREAD,
        {"CONN_MAX_AGE": "60"},
        needs="gunicorn",
    ),
    Variant(
        "floor: bare ASGI app doing only MD5 + pwrite + fdatasync + 1 INSERT, uvicorn -w 2",
        FLOOR,
        floor=True,
    ),
]


@dataclass(frozen=True)
class VariantResult:
    """A variant's ingest and the nginx rounds around it, both with their CPU."""

    name: str
    relay: MeteredTransfer | None
    nginx: MeteredTransfer | None
    peak_rss: int
    note: str = ""

    @property
    def ratio(self) -> float:
        if not (self.relay and self.nginx):
            return 0.0
        return self.relay.transfer.mb_per_s / self.nginx.transfer.mb_per_s


def nginx_metered(
    nginx: servers.Nginx,
    paths: list[Path],
    run: str,
    quiesce: Callable[[], None],
    chunk_size: int = clients.CHUNK_SIZE,
    indexes: range | None = None,
    in_flight: int = clients.IN_FLIGHT,
    keep_alive: bool = True,
) -> MeteredTransfer:
    """One nginx round of chunks of ``paths``; its files are removed afterwards."""
    quiesce()
    result = metered(
        nginx.pid,
        lambda: clients.nginx_put(
            paths=paths,
            port=nginx.port,
            run=run,
            chunk_size=chunk_size,
            indexes=indexes,
            in_flight=in_flight,
            keep_alive=keep_alive,
        ),
    )
    shutil.rmtree(nginx.put_dir(run), ignore_errors=True)
    return result


def pooled(runs: list[MeteredTransfer]) -> MeteredTransfer:
    """The runs folded into one: summed bytes, seconds, requests and CPU."""
    return MeteredTransfer(
        clients.Transfer(
            bytes=sum(r.transfer.bytes for r in runs),
            seconds=sum(r.transfer.seconds for r in runs),
            requests=sum(r.transfer.requests for r in runs),
        ),
        server_cpu=sum(r.server_cpu for r in runs),
        client_cpu=sum(r.client_cpu for r in runs),
    )


def _measure_one(
    variant: Variant,
    base_env: dict[str, str],
    log: Path,
    paths: list[Path],
    nginx: servers.Nginx,
    quiesce: Callable[[], None],
) -> VariantResult:
    """One variant: nginx round, the variant's ingest, nginx round; then stop it."""
    floor_dir = log.with_suffix(".floor")
    floor_dir.mkdir()
    env = {**variant.env, "FLOOR_DIR": str(floor_dir)} if variant.floor else variant.env
    with ExitStack() as stack:
        web = servers.start_web_only(stack, base_env, variant.argv, log, **env)
        if variant.floor:

            def send() -> clients.Transfer:
                return clients.put_chunks(
                    paths=paths,
                    port=web.port,
                    path_for=lambda i: f"/api/v1/upload/floor/chunk?index={i}",
                    headers={"Authorization": "Bearer floor"},
                    ok_statuses=frozenset({200}),
                )
        else:
            client = clients.RelayClient(
                web.base, web.port, servers.BENCH_USERNAME, servers.BENCH_PASSWORD
            )
            upload = client.init(paths, chunk_size=variant.chunk_size)

            def send() -> clients.Transfer:
                return client.send_chunks(
                    upload,
                    paths,
                    credential=variant.credential,
                    in_flight=variant.in_flight,
                    keep_alive=variant.keep_alive,
                )

        yardstick = functools.partial(
            nginx_metered,
            nginx,
            paths,
            quiesce=quiesce,
            chunk_size=variant.chunk_size,
            in_flight=variant.in_flight,
            keep_alive=variant.keep_alive,
        )
        before = yardstick(run="variant-before")
        quiesce()
        with RssSampler(web.process.pid) as sampler, sampler.phase("ingest"):
            relay = metered(web.process.pid, send)
        after = yardstick(run="variant-after")
        if not variant.floor:
            client.cancel(upload)
        peak = sampler.peak("ingest", children_only=False).rss
    shutil.rmtree(floor_dir, ignore_errors=True)
    return VariantResult(variant.name, relay, pooled([before, after]), peak)


def ingest_variants(
    directory: Path,
    paths: list[Path],
    nginx: servers.Nginx,
    pacs: LocalOrthanc,
    quiesce: Callable[[], None],
) -> list[VariantResult]:
    """Ingest ``paths`` into each variant in turn; one result per variant (skipped ones too)."""
    directory.mkdir(parents=True, exist_ok=True)
    base_env = servers.prepare_data_dir(directory / "data", pacs)
    results = []
    for number, variant in enumerate(VARIANTS, start=1):
        if variant.needs and importlib.util.find_spec(variant.needs) is None:
            results.append(
                VariantResult(
                    variant.name, None, None, 0, f"skipped: {variant.needs} is not installed"
                )
            )
            continue
        log = directory / f"variant-{number}.log"
        results.append(_measure_one(variant, base_env, log, paths, nginx, quiesce))
    return results


def report(results: list[VariantResult]) -> str:
    """A Markdown table of the variants."""
    size = next((r.relay.transfer.bytes for r in results if r.relay), 0)
    lines = [
        f"Ingest of {size / 1e6:.0f} MB with other web servers and settings (web server alone, "
        "same client; nginx measured before and after each; CPU = user+system ms per chunk):",
        "",
        "| Web server | RelayPACS | nginx | Ratio | Server CPU/chunk | Client CPU/chunk | nginx CPU/chunk | Peak RSS, one process |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.relay is None or r.nginx is None:
            lines.append(f"| {r.name} | {r.note} | | | | | | |")
            continue
        lines.append(
            f"| {r.name} | {r.relay.transfer.mb_per_s:.0f} MB/s | {r.nginx.transfer.mb_per_s:.0f} MB/s | "
            f"{r.ratio:.2f}x | {r.relay.server_ms_per_request:.1f} ms | {r.relay.client_ms_per_request:.1f} ms | "
            f"{r.nginx.server_ms_per_request:.1f} ms | {r.peak_rss / 1e6:.0f} MB |"
        )
    return "\n".join(lines)
