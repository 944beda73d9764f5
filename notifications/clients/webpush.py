"""The one client of push services (Web Push, RFC 8030), by pywebpush.

Every message is encrypted ``aes128gcm`` (RFC 8291) to the subscription's keys and signed
with the ``vapid`` scheme (RFC 8292: ``Authorization: vapid t=<JWT>, k=<public key>``, what
Apple's service takes), with a JWT that expires VAPID_JWT_LIFETIME from now (RFC 8292
allows at most 24 h). Nothing outside ``notifications`` speaks to a push service, and no
response body is ever read, logged or raised: a push service's answer may echo the endpoint.

The endpoint is an address a browser gave, so the server is made to POST wherever a user
says: ``endpoint_addresses`` refuses a host that is an IP literal or resolves to anything
but a public (global unicast) address, and a port other than 443 (every browser's push
service uses 443). It is checked when a subscription is saved and again for each push,
and the push connects to the very address checked (``_PinnedAdapter``), so a DNS answer
that changes between the check and the connection (DNS rebinding) cannot reach an inside
address. A redirect is never followed (a push service never redirects) and the body of
the answer is never read: status and headers only, within TIMEOUT_SECONDS.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..vapid import VapidKeys

# RFC 8292 §2: at most 24 hours; 12 h leaves room for a push service whose clock is ahead.
VAPID_JWT_LIFETIME_SECONDS = 12 * 3600
# (connect, read): a push service answers within a second; one that has not connected in
# 5 s or answered in 10 s is treated as busy (retried), and a worker is never held longer.
TIMEOUT_SECONDS = (5.0, 10.0)
# Statuses that say "not now": retried with backoff; every 5xx as well.
RETRYABLE_STATUSES = frozenset({408, 425, 429})
# The subscription is gone for good: deleted here.
GONE_STATUSES = frozenset({404, 410})
# Every browser's push service (FCM, Mozilla, Apple, Microsoft) listens on 443 only.
PUSH_SERVICE_PORT = 443
DEFAULT_PORTS = {"https": 443, "http": 80}
# NAT64's well-known prefix (RFC 6052) carries an IPv4 address, loopback or private ones too.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class PushOutcome(enum.StrEnum):
    DELIVERED = "delivered"
    GONE = "gone"  # 404/410: the browser unsubscribed or the subscription expired
    BUSY = "busy"  # 429, 5xx, a timeout or no connection: try again later
    REFUSED = "refused"  # any other 4xx (a bad key, too large): trying again cannot help
    # Not a push service's address (an inside address now, or it redirected): never sent
    # to again, the subscription is deleted.
    UNSAFE = "unsafe"


class EndpointRefused(ValueError):
    """The endpoint is not one the server may POST to; the message is a sentence without
    the address (which is the user's)."""


class EndpointUnresolved(EndpointRefused):
    """The host did not resolve (now): at send time, perhaps the resolver is down: busy."""


@dataclass(frozen=True)
class PushTarget:
    endpoint: str
    p256dh: str
    auth: str


@dataclass(frozen=True)
class PushResult:
    outcome: PushOutcome
    status_code: int | None
    # Seconds the push service asked to wait (Retry-After), when it said.
    retry_after: float | None = None


def _address_is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Global unicast only: not loopback, private (RFC 1918, IPv6 ULA), link-local (incl.
    169.254.169.254, the cloud metadata service), shared (100.64/10), reserved,
    documentation, multicast or unspecified; no IPv4 carried in an IPv6 address."""
    if isinstance(address, ipaddress.IPv6Address) and (
        address.ipv4_mapped or address.sixtofour or address.teredo or address in _NAT64
    ):
        return False
    return bool(
        address.is_global
        and not (
            address.is_multicast
            or address.is_reserved
            or address.is_link_local
            or address.is_loopback
            or address.is_unspecified
            or address.is_private
        )
    )


def _acceptable(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_loopback: bool
) -> bool:
    return _address_is_public(address) or (allow_loopback and address.is_loopback)


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP literal (what the test-only setting lets http reach)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint_addresses(*, endpoint: str, allow_insecure: bool) -> tuple[str, ...]:
    """The IP addresses to connect to for ``endpoint``, in the resolver's order: its host
    resolved now, every address it resolves to public. ``allow_insecure`` (WEB_PUSH_ALLOW_INSECURE_ENDPOINTS, tests
    only) also lets a loopback host (``127.0.0.1``, ``localhost``) and any port through.

    Raises EndpointRefused: an IP literal (other than that loopback), a port other than
    443, a host that does not resolve or resolves to any address not public.
    """
    parts = urlsplit(endpoint)
    try:
        host = parts.hostname or ""
        port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
    except ValueError:
        raise EndpointRefused(
            "The browser's push address is not one a push service uses."
        ) from None
    if not host:
        raise EndpointRefused("The browser's push address is not one a push service uses.")
    if port != PUSH_SERVICE_PORT and not allow_insecure:
        raise EndpointRefused("The browser's push address is not one a push service uses.")
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None and not (allow_insecure and literal.is_loopback):
        raise EndpointRefused("The browser's push address is not one a push service uses.")
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise EndpointUnresolved(
            "The browser's push address cannot be found on the network."
        ) from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in found]
    if not addresses or not all(_acceptable(a, allow_loopback=allow_insecure) for a in addresses):
        raise EndpointRefused("The browser's push address is not one a push service uses.")
    return tuple(dict.fromkeys(str(a) for a in addresses))


def _pinned_pools(addresses: tuple[str, ...]) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pools whose connections open a socket to one of ``addresses`` (the
    first that answers) while the URL's host stays the name used for the Host header, TLS
    SNI and the certificate check."""

    def new_conn(connection: HTTPConnection, parent: Any) -> socket.socket:
        hostname = connection._dns_host
        failure: Exception | None = None
        try:
            for address in addresses:
                connection._dns_host = address  # what urllib3 resolves and connects to
                try:
                    return parent._new_conn(connection)  # type: ignore[no-any-return]
                except OSError as exc:  # urllib3's NewConnectionError, ConnectTimeoutError
                    failure = exc
            assert failure is not None, "endpoint_addresses returns at least one address"
            raise failure
        finally:
            connection._dns_host = hostname

    class PinnedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self, HTTPConnection)

    class PinnedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            return new_conn(self, HTTPSConnection)

    class PinnedHTTPPool(HTTPConnectionPool):
        ConnectionCls = PinnedHTTPConnection

    class PinnedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = PinnedHTTPSConnection

    return {"http": PinnedHTTPPool, "https": PinnedHTTPSPool}


class _PinnedAdapter(HTTPAdapter):
    def __init__(self, addresses: tuple[str, ...]) -> None:
        self._addresses = addresses
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pinned_pools(self._addresses)


class PushSession(requests.Session):
    """A session for one push: connects to ``addresses`` only, never follows a redirect,
    never reads a body (``stream``), bounded by TIMEOUT_SECONDS, and takes no proxy or
    .netrc from the environment (a proxy would resolve the name again)."""

    def __init__(self, addresses: tuple[str, ...]) -> None:
        super().__init__()
        self.trust_env = False
        self.max_redirects = 0
        adapter = _PinnedAdapter(addresses)
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs.update(allow_redirects=False, stream=True, timeout=TIMEOUT_SECONDS)
        return super().request(method, url, *args, **kwargs)

    def resolve_redirects(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """Nothing: even with allow_redirects=False, requests prepares the next request of
        a 3xx (``response.next``) here, reading the whole body first."""
        return iter(())


def audience(endpoint: str) -> str:
    """RFC 8292's ``aud``: the endpoint's origin, scheme and lower-cased host, the port
    only when it is not the scheme's default."""
    parts = urlsplit(endpoint)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


def vapid_claims(*, endpoint: str, subject: str, now: float | None = None) -> dict[str, str | int]:
    """The JWT claims of a push to ``endpoint``: ``aud`` its origin, ``exp`` set here (not
    pywebpush's default), ``sub`` the contact."""
    return {
        "aud": audience(endpoint),
        "exp": int(now if now is not None else time.time()) + VAPID_JWT_LIFETIME_SECONDS,
        "sub": subject,
    }


def retry_after_seconds(value: str, *, now: datetime | None = None) -> float | None:
    """Retry-After (RFC 9110 §10.2.3): seconds, or an HTTP date; None when it is neither."""
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def classify(status_code: int) -> PushOutcome:
    if status_code < 300:
        return PushOutcome.DELIVERED
    if status_code < 400:  # a redirect: a push service never sends one
        return PushOutcome.UNSAFE
    if status_code in GONE_STATUSES:
        return PushOutcome.GONE
    if status_code >= 500 or status_code in RETRYABLE_STATUSES:
        return PushOutcome.BUSY
    return PushOutcome.REFUSED


def push_send(
    *,
    target: PushTarget,
    payload: bytes,
    keys: VapidKeys,
    ttl_seconds: int,
    urgency: str,
    topic: str = "",
    allow_insecure: bool = False,
) -> PushResult:
    """POST one encrypted message to ``target``'s push service; never raises for what the
    push service answers, for a network failure or for an endpoint refused now (see
    PushOutcome: UNSAFE, with no status, when ``endpoint_addresses`` refuses it).

    pywebpush encrypts and signs; the POST is this module's, through a PushSession:
    pywebpush's own ``send`` reads ``response.text`` for its debug line whatever the
    verbosity, and ``webpush()`` reads it again for its exception, so neither is used.
    """
    # Imported here: pywebpush brings aiohttp, which the web processes (which never push)
    # need not carry in memory for every open stream.
    from py_vapid import Vapid  # noqa: PLC0415
    from pywebpush import WebPusher, WebPushException  # noqa: PLC0415

    try:
        addresses = endpoint_addresses(endpoint=target.endpoint, allow_insecure=allow_insecure)
    except EndpointUnresolved:  # a resolver that is down must not cost the subscription
        return PushResult(PushOutcome.BUSY, None)
    except EndpointRefused:
        return PushResult(PushOutcome.UNSAFE, None)
    headers = {"Urgency": urgency}
    if topic:
        headers["Topic"] = topic
    try:
        headers.update(
            Vapid(keys.private_key).sign(
                vapid_claims(endpoint=target.endpoint, subject=keys.subject)
            )
        )
        pusher = WebPusher(
            {"endpoint": target.endpoint, "keys": {"p256dh": target.p256dh, "auth": target.auth}}
        )
        # pywebpush 2.5.0 (pinned): the encrypted body and headers send() would POST.
        prepared = pusher._prepare_send_data(
            payload, headers, ttl=ttl_seconds, content_encoding="aes128gcm"
        )
    except (WebPushException, ValueError, TypeError):  # keys that are not a P-256 point
        return PushResult(PushOutcome.REFUSED, None)
    with PushSession(addresses) as session:
        try:
            response = session.post(
                target.endpoint, data=prepared["data"], headers=prepared["headers"]
            )
        except requests.RequestException:
            return PushResult(PushOutcome.BUSY, None)
        with response:  # closes the connection, the body unread
            status = response.status_code
            retry_after = retry_after_seconds(response.headers.get("Retry-After", ""))
    return PushResult(classify(status), status, retry_after)
