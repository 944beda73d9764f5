"""A thin HTTP proxy in front of the test Orthanc that can change its answers.

It stands in for PACS that behave differently from Orthanc (pages capped at 100 results,
STOW-RS answers in XML or without a body) while the real Orthanc still stores and lists
the instances, and it counts the requests that reach the PACS.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import requests

# Headers that belong to one connection and must not be copied through the proxy.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "host",
    }
)


@dataclass(frozen=True)
class Exchange:
    """One request as it reached the proxy and Orthanc's answer to it."""

    method: str
    path: str  # without the query string
    query: str
    status: int
    content_type: str
    body: bytes


# Given Orthanc's answer, what the proxy answers instead: (status, content type, body).
Rewrite = Callable[[Exchange], tuple[int, str, bytes]]


def unchanged(exchange: Exchange) -> tuple[int, str, bytes]:
    return exchange.status, exchange.content_type, exchange.body


@dataclass
class PacsProxy:
    """Forwards every request to ``upstream``; ``rewrite`` may change each answer."""

    upstream: str
    rewrite: Rewrite = unchanged
    requests_seen: Counter[tuple[str, str]] = field(default_factory=Counter)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, *, method: str | None = None, path_contains: str = "") -> int:
        with self.lock:
            return sum(
                n
                for (seen_method, path), n in self.requests_seen.items()
                if (method is None or seen_method == method) and path_contains in path
            )

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        with self.lock:
            self.requests_seen[(handler.command, parts.path)] += 1
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        try:
            answer = requests.request(
                handler.command,
                f"{self.upstream}{handler.path}",
                headers=headers,
                data=body,
                timeout=60,
                allow_redirects=False,
            )
        except requests.RequestException:
            status, content_type, content = 502, "text/plain", b"upstream down"
        else:
            status, content_type, content = self.rewrite(
                Exchange(
                    method=handler.command,
                    path=parts.path,
                    query=parts.query,
                    status=answer.status_code,
                    content_type=answer.headers.get("Content-Type", ""),
                    body=answer.content,
                )
            )
        handler.send_response(status)
        if content_type:
            handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(content)))
        handler.end_headers()
        handler.wfile.write(content)


@contextmanager
def pacs_proxy(upstream: str, rewrite: Rewrite = unchanged) -> Iterator[PacsProxy]:
    """Run a PacsProxy on a free local port for the duration of the block."""
    proxy = PacsProxy(upstream=upstream.rstrip("/"), rewrite=rewrite)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            proxy.handle(self)

        do_POST = do_PUT = do_DELETE = do_GET

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # the test output stays readable

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    proxy.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="pacs-proxy", daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
