"""What the DICOMweb and Orthanc clients share: one HTTP session per target, error mapping
and streaming of instance bytes. Nothing outside ``pacs.clients`` uses this module.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, Self

import requests

from pacs.errors import InstanceSourceError, PacsRejected, PacsUnavailable

if TYPE_CHECKING:
    from types import TracebackType

    from pacs.selectors import PacsTarget

logger = logging.getLogger(__name__)

# Instance bytes travel in blocks of this size: large enough that per-block overhead does
# not matter, small enough that memory stays flat whatever the size of the study.
READ_BLOCK_BYTES = 1024 * 1024
# A PACS that does not accept a TCP connection within this time is down; the full
# timeout of the target is for reading answers, which can take long on a big batch.
CONNECT_TIMEOUT_SECONDS = 10.0
# Statuses that say "not now" rather than "never"; every 5xx is retryable as well.
RETRYABLE_STATUSES = frozenset({408, 425, 429})
# Keep technical details attached to errors short: they end up in logs and API errors.
DETAIL_MAX_CHARS = 300


class DicomPart(Protocol):
    """One Part 10 file to send: ``open()`` gives a fresh stream of exactly ``size`` bytes."""

    @property
    def sop_instance_uid(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def open(self) -> Callable[[], BinaryIO]: ...


def is_retryable_status(status_code: int) -> bool:
    return status_code >= 500 or status_code in RETRYABLE_STATUSES


def short_detail(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DETAIL_MAX_CHARS else text[: DETAIL_MAX_CHARS - 1] + "…"


def iter_part_bytes(part: DicomPart) -> Generator[bytes, None, None]:
    """Yield the bytes of ``part`` in blocks of at most READ_BLOCK_BYTES, unchanged.

    Opens the stream lazily and always closes it, also when the consumer stops early.
    Raises InstanceSourceError when the stream cannot be read or does not hold exactly
    ``part.size`` bytes (a PACS must never store a truncated or padded file).
    """
    uid = part.sop_instance_uid
    try:
        stream = part.open()
    except Exception as exc:
        raise InstanceSourceError(sop_instance_uid=uid, detail=f"cannot open: {exc}") from exc
    try:
        remaining = part.size
        while remaining > 0:
            try:
                block = stream.read(min(READ_BLOCK_BYTES, remaining))
            except OSError as exc:
                raise InstanceSourceError(
                    sop_instance_uid=uid, detail=f"cannot read: {exc}"
                ) from exc
            if not block:
                raise InstanceSourceError(
                    sop_instance_uid=uid,
                    detail=f"stream ended after {part.size - remaining} of {part.size} bytes",
                )
            remaining -= len(block)
            yield block
        if stream.read(1):
            raise InstanceSourceError(
                sop_instance_uid=uid,
                detail=f"stream holds more than the declared {part.size} bytes",
            )
    finally:
        stream.close()


class SizedBody:
    """A request body of known ``length``, streamed from ``blocks`` as they come.

    requests sends a bare generator with ``Transfer-Encoding: chunked``, for which urllib3
    copies every block once more to frame it; given the length, it sends each block as it
    is. ``blocks`` must yield exactly ``length`` bytes (``iter_part_bytes`` raises before
    a part could be shorter or longer). ``close()`` closes the generator, and with it the
    instance stream being read.
    """

    def __init__(self, blocks: Generator[bytes, None, None], length: int) -> None:
        self.blocks = blocks
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[bytes]:
        return self.blocks

    def close(self) -> None:
        self.blocks.close()


def pacs_session(target: PacsTarget) -> requests.Session:
    """An HTTP session with the target's credentials and TLS settings: every client that
    speaks to a PACS (STOW-RS, QIDO-RS, the reports' WADO-RS) authenticates the same way."""
    session = requests.Session()
    session.headers["User-Agent"] = "RelayPACS"
    if target.token:
        session.headers["Authorization"] = f"Bearer {target.token}"
    elif target.username:
        session.auth = (target.username, target.password)
    session.verify = target.ca_bundle or True
    if target.client_cert:
        session.cert = (
            (target.client_cert, target.client_key) if target.client_key else target.client_cert
        )
    return session


class PacsHttpClient:
    """An HTTP session configured for one PACS target; use as a context manager.

    Authentication is a bearer token when the target has one, else basic auth when it
    has a username. TLS verification uses the target's CA bundle or the system CAs, and
    a client certificate when one is configured.

    Raises PacsRejected at construction when a configured TLS file does not exist.
    """

    def __init__(self, target: PacsTarget, *, timeout: float | None = None) -> None:
        self.target = target
        read_timeout = float(timeout if timeout is not None else target.timeout_seconds)
        self.timeout = (min(CONNECT_TIMEOUT_SECONDS, read_timeout), read_timeout)
        missing = [
            path
            for path in (target.ca_bundle, target.client_cert, target.client_key)
            if path and not os.path.exists(path)
        ]
        if missing:
            # Otherwise the TLS handshake fails as a connection error, retried for days.
            raise PacsRejected(pacs=target.name, detail=f"TLS file not found: {', '.join(missing)}")
        self.session = pacs_session(target)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def request(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        """Send one request; transport failures become PacsUnavailable or PacsRejected.

        InstanceSourceError raised while streaming a body passes through unchanged.
        HTTP statuses are not interpreted here.
        """
        name = self.target.name
        streamed = isinstance(kwargs.get("data"), SizedBody)
        # A streamed body cannot be sent twice: a redirect would resend it used up.
        kwargs.setdefault("allow_redirects", not streamed)
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except InstanceSourceError:
            raise
        except requests.Timeout as exc:
            raise PacsUnavailable(
                pacs=name, detail=short_detail(f"timed out ({type(exc).__name__}): {exc}")
            ) from exc
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
            requests.exceptions.InvalidHeader,
        ) as exc:
            raise PacsRejected(pacs=name, detail=short_detail(str(exc))) from exc
        except requests.RequestException as exc:
            raise PacsUnavailable(
                pacs=name, detail=short_detail(f"{type(exc).__name__}: {exc}")
            ) from exc
        except OSError as exc:
            # requests raises plain OSError for a missing CA bundle or client certificate.
            raise PacsRejected(pacs=name, detail=short_detail(str(exc))) from exc
        if streamed and response.is_redirect:
            location = response.headers.get("Location", "")
            raise PacsRejected(
                pacs=name,
                detail=short_detail(
                    f"HTTP {response.status_code}: the PACS redirects {url} to {location}; "
                    "configure the address it redirects to"
                ),
                http_status=response.status_code,
            )
        return response

    def raise_for_status(self, response: requests.Response, *, what: str) -> None:
        """Raise PacsUnavailable on a retryable status, PacsRejected on any other non-2xx."""
        status = response.status_code
        if 200 <= status < 300:
            return
        # The body is left out on purpose: a PACS may echo patient data in its errors.
        detail = f"{what} answered HTTP {status}"
        if is_retryable_status(status):
            raise PacsUnavailable(pacs=self.target.name, detail=detail, http_status=status)
        raise PacsRejected(pacs=self.target.name, detail=detail, http_status=status)
