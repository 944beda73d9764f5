"""``GET /metrics``: Prometheus text for every process of the product, and its guards.

Counters and histograms are prometheus-client metrics defined in each app's ``metrics.py``
(``uploads.metrics``, ``pacs.metrics``) and counted in the process where things happen.
With several processes (``manage.py serve``: uvicorn workers, the Celery worker and its
pool) each process writes its values to files in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-
client's multiprocess mode, set by ``serve`` under DATA_DIR, emptied at each start) and a
scrape sums them, so the answer does not depend on which web worker took the scrape.

Gauges of "now" (uploads per state, reports open, queue depth, disk, the PACS being up,
beat's heartbeat) are never kept in a process: collectors named in ``METRICS_COLLECTORS``
compute them at scrape time from the database, the broker and the disk.

Access: a scrape needs ``Authorization: Bearer <METRICS_TOKEN>`` or a client address in
``METRICS_ALLOWED_IPS``. With neither set, the embedded default answers this machine only
(loopback): ``serve`` binds every interface, and a phone on the clinic network must not
read them. Production settings (``METRICS_REQUIRE_AUTH``) have no such default: behind a
proxy on the same host every request comes from loopback, so one of the two must be set.
A worker's own server (``METRICS_WORKER_PORT``) checks the same token and allowlist, and
always answers loopback (no proxy in front of it: that is its container's health check).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from celery import shared_task
from django.conf import settings
from django.core.cache import cache as django_cache
from django.http import HttpRequest, HttpResponse
from django.utils.module_loading import import_string
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BEAT_HEARTBEAT_KEY = "relaypacs:beat-heartbeat"
# Kept far longer than any alert waits, so a stopped beat shows an old timestamp (the
# alert fires on its age) instead of no sample at all.
BEAT_HEARTBEAT_TTL_SECONDS = 7 * 86400

CELERY_TASK_RETRIES = Counter(
    "relaypacs_celery_task_retries_total",
    "Celery tasks that asked to be retried (a database hiccup), by task.",
    ["task"],
)


# --- Multiprocess mode -------------------------------------------------------------------
def multiproc_dir() -> Path | None:
    value = os.environ.get(MULTIPROC_ENV, "")
    return Path(value) if value else None


def multiproc_dir_reset(directory: Path) -> None:
    """Empty (or create) the multiprocess directory; ``serve`` calls it before it starts a
    process that counts, so that values of an earlier run are not summed into this one."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, mode=0o700)


def _pid_of(path: Path) -> int | None:
    # prometheus-client names its files <kind>_<pid>.db (gauges: gauge_<mode>_<pid>.db).
    tail = path.stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def dead_processes_mark(directory: Path) -> list[int]:
    """Mark every process that wrote to ``directory`` and no longer runs as dead.

    ``serve`` cannot see the pids of uvicorn's or Celery's own children, so it looks at
    the files instead: a worker that was killed (SIGKILL runs no exit hook) is found here.
    Counters of dead processes stay (totals never go down); live gauges are removed.
    """
    from prometheus_client import multiprocess

    dead: list[int] = []
    for path in directory.glob("*.db"):
        pid = _pid_of(path)
        if pid is None or pid in dead or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            dead.append(pid)
        except PermissionError:
            continue
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(directory))
    return dead


def this_process_exits() -> None:
    """Exit hook of a counting process (uvicorn worker shutdown, Celery pool child)."""
    directory = multiproc_dir()
    if directory is not None and directory.is_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid(), str(directory))


# --- Scrape-time collectors ----------------------------------------------------------------
class _ProcessRegistry(Collector):
    """This process's own metrics, when there is no multiprocess directory (tests, runserver)."""

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


@cache
def _collectors() -> tuple[Collector, ...]:
    return tuple(import_string(path)() for path in settings.METRICS_COLLECTORS)


class _Guarded(Collector):
    """A collector whose failure (a database that went away) costs its own families only,
    counted in ``relaypacs_metrics_collector_errors`` instead of failing the whole scrape."""

    def __init__(self, collector: Collector, errors: list[str]) -> None:
        self.collector, self.errors = collector, errors

    def collect(self) -> Iterable[Metric]:
        try:
            return list(self.collector.collect())
        except Exception as exc:
            name = type(self.collector).__name__
            logger.warning("metrics collector %s failed: %s", name, type(exc).__name__)
            self.errors.append(name)
            return []


def metrics_text() -> bytes:
    """The whole exposition: every process's counters plus the scrape-time collectors."""
    registry = CollectorRegistry(auto_describe=False)
    directory = multiproc_dir()
    if directory is not None:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=str(directory))
    else:
        registry.register(_ProcessRegistry())
    errors: list[str] = []
    for collector in _collectors():
        registry.register(_Guarded(collector, errors))
    body = generate_latest(registry)
    failed = GaugeMetricFamily(
        "relaypacs_metrics_collector_errors",
        "Collectors that failed during this scrape (their families are missing).",
        labels=["collector"],
    )
    for name in errors:
        failed.add_metric([name], 1)
    if errors:
        extra = CollectorRegistry(auto_describe=False)
        extra.register(_Static([failed]))
        body += generate_latest(extra)
    return body


class _Static(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _queue_depths() -> Iterator[tuple[str, int]]:
    """Messages waiting in the broker, by queue: Redis list lengths, or the embedded
    (filesystem) broker's message files."""
    url = settings.CELERY_BROKER_URL
    if url.startswith("filesystem://"):
        counts: dict[str, int] = {}
        for path in Path(settings.BROKER_DIR).glob("*.msg"):
            # kombu names them <time>_<uuid>.<queue>.msg
            queue = path.name.removesuffix(".msg").rsplit(".", 1)[-1]
            counts[queue] = counts.get(queue, 0) + 1
        yield from sorted(counts.items()) or [("celery", 0)]
    elif url.startswith(("redis://", "rediss://")):
        import redis

        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            yield "celery", int(client.llen("celery"))  # type: ignore[arg-type]
        finally:
            client.close()


class RuntimeCollector(Collector):
    """Celery queue depth, beat's heartbeat and the upload storage's disk, at scrape time."""

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "relaypacs_celery_queue_depth",
            "Task messages waiting in the broker for a worker.",
            labels=["queue"],
        )
        try:
            for queue, count in _queue_depths():
                depth.add_metric([queue], count)
        except Exception as exc:  # the broker down must not hide the other families
            logger.warning("queue depth unavailable: %s", type(exc).__name__)
        yield depth
        beat = GaugeMetricFamily(
            "relaypacs_beat_heartbeat_timestamp_seconds",
            "When Celery beat's heartbeat task last ran (Unix time); old means beat or "
            "every worker stopped.",
        )
        last = django_cache.get(BEAT_HEARTBEAT_KEY)
        if last is not None:
            beat.add_metric([], float(last))
        yield beat
        storage = Path(settings.UPLOAD_STORAGE_DIR)
        storage.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(storage)
        yield GaugeMetricFamily(
            "relaypacs_upload_storage_size_bytes",
            "Size of the file system holding UPLOAD_STORAGE_DIR.",
            value=usage.total,
        )
        yield GaugeMetricFamily(
            "relaypacs_upload_storage_free_bytes",
            "Bytes free for uploads on the file system holding UPLOAD_STORAGE_DIR.",
            value=usage.free,
        )


@shared_task(name="relaypacs.metrics.beat_heartbeat", ignore_result=True)
def beat_heartbeat() -> None:
    """Scheduled by beat every BEAT_HEARTBEAT_SECONDS: the time it ran, for the alert."""
    django_cache.set(BEAT_HEARTBEAT_KEY, time.time(), BEAT_HEARTBEAT_TTL_SECONDS)


# --- The view ----------------------------------------------------------------------------
LOOPBACK_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _loopback_by_default() -> bool:
    """The embedded default's guard: nothing configured, so only this machine may scrape."""
    return not (
        settings.METRICS_REQUIRE_AUTH or settings.METRICS_TOKEN or settings.METRICS_ALLOWED_IPS
    )


def _allowed_networks(*, with_loopback: bool) -> list[Network]:
    networks: list[Network] = []
    for entry in settings.METRICS_ALLOWED_IPS:
        if not entry.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:  # refused, not a 500 at every scrape: the log says which
            logger.warning("METRICS_ALLOWED_IPS entry %r is not an address or network", entry)
    if with_loopback or _loopback_by_default():
        networks += LOOPBACK_NETWORKS
    return networks


def _address_allowed(address: str | None, networks: list[Network]) -> bool:
    if not address or not networks:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's ::ffff:127.0.0.1
    return any(ip in network for network in networks)


def _token_matches(authorization: str) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return False
    scheme, _, value = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        value.strip().encode(), token.encode()
    )


def scrape_allowed(*, authorization: str, address: str | None, with_loopback: bool) -> bool:
    """Whether a scrape with this Authorization header from this address may read the
    metrics: the token, an address in METRICS_ALLOWED_IPS, or loopback when ``with_loopback``
    or when nothing is configured outside production."""
    return _token_matches(authorization) or _address_allowed(
        address, _allowed_networks(with_loopback=with_loopback)
    )


def scrape_refusal() -> tuple[int, str, dict[str, str]]:
    """Status, sentence and headers of a refused scrape."""
    if settings.METRICS_TOKEN:
        detail = (
            "This scrape was refused: send 'Authorization: Bearer <METRICS_TOKEN>' or "
            "scrape from an address in METRICS_ALLOWED_IPS.\n"
        )
        return 401, detail, {"WWW-Authenticate": 'Bearer realm="metrics"'}
    if settings.METRICS_ALLOWED_IPS:
        detail = (
            "This scrape was refused: this address is not in METRICS_ALLOWED_IPS. Add it, "
            "or set METRICS_TOKEN and scrape with 'Authorization: Bearer <token>'.\n"
        )
    elif _loopback_by_default():
        detail = (
            "Metrics are readable from this machine only. To scrape from another one, set "
            "METRICS_TOKEN (and scrape with 'Authorization: Bearer <token>') or "
            "METRICS_ALLOWED_IPS (the scraper's address), then restart.\n"
        )
    else:
        detail = (
            "Metrics are not open on this server. Set METRICS_TOKEN (and scrape with "
            "'Authorization: Bearer <token>') or METRICS_ALLOWED_IPS, then restart.\n"
        )
    return 403, detail, {}


def metrics_access_allowed(request: HttpRequest) -> bool:
    from accounts.clientinfo import client_ip

    return scrape_allowed(
        authorization=request.headers.get("Authorization", ""),
        address=client_ip(request),
        with_loopback=False,
    )


def metrics_view(request: HttpRequest) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
    if not metrics_access_allowed(request):
        status, detail, headers = scrape_refusal()
        return HttpResponse(
            detail, status=status, content_type="text/plain; charset=utf-8", headers=headers
        )
    return HttpResponse(metrics_text(), content_type=CONTENT_TYPE_LATEST)


# --- Celery hooks ----------------------------------------------------------------------
def _on_task_retry(sender: Any = None, request: Any = None, **kwargs: Any) -> None:
    name = getattr(request, "task", None) or getattr(sender, "name", "unknown")
    CELERY_TASK_RETRIES.labels(task=str(name)).inc()


def _on_pool_child_exit(**kwargs: Any) -> None:
    this_process_exits()


class _WorkerMetricsServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Every scrape would be a line in the worker's log."""


def worker_metrics_app(registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    """The worker's /metrics as a WSGI app: prometheus-client's, behind the same guard as the
    web's (``scrape_allowed``; REMOTE_ADDR is the peer, there is no proxy in front)."""
    from prometheus_client import make_wsgi_app

    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if scrape_allowed(
            authorization=environ.get("HTTP_AUTHORIZATION", ""),
            address=environ.get("REMOTE_ADDR"),
            with_loopback=True,
        ):
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        status, detail, headers = scrape_refusal()
        body = detail.encode()
        reason = "Unauthorized" if status == 401 else "Forbidden"
        start_response(
            f"{status} {reason}",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                *headers.items(),
            ],
        )
        return [body]

    return app


def worker_metrics_server_start(*, port: int) -> None:
    """A Celery worker run on its own (a container of its own, not under ``serve``): its
    processes' counters on ``port`` (/metrics), every interface (Prometheus scrapes it over
    the network), guarded by METRICS_TOKEN / METRICS_ALLOWED_IPS; loopback always answers.
    Its multiprocess directory must be empty when the worker starts (a folder inside the
    container, or emptied by its command: the worker's modules count into it before this
    runs). The database gauges stay with the web's /metrics."""
    from prometheus_client import multiprocess

    directory = multiproc_dir()
    if directory is None:
        raise RuntimeError(
            f"METRICS_WORKER_PORT needs {MULTIPROC_ENV} (a folder of this worker's own) to "
            "count every pool process; set it and start the worker again."
        )
    registry = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(registry, path=str(directory))
    server = make_server(
        "0.0.0.0",  # noqa: S104 - scraped over the network; the guard is the token
        port,
        worker_metrics_app(registry),
        server_class=_WorkerMetricsServer,
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True).start()


def celery_signals_connect() -> None:
    """Called by relaypacs.celery: retries counted, a pool child's live gauges removed."""
    from celery import signals

    signals.task_retry.connect(_on_task_retry, weak=False)
    signals.worker_process_shutdown.connect(_on_pool_child_exit, weak=False)
