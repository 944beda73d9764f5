"""The PACS gateway's Prometheus metrics: request times by destination, and whether each
destination is up (exposed by relaypacs.metrics at /metrics).

``destination`` is the target's configured name (an administrator's label, never a host,
a study or a patient). The clients time their own requests with ``stow_timed`` and
``qido_timed``; ``PacsCollector`` reads the health probes at scrape time.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import PacsRejected, PacsUnavailable

# From a tiny batch on a local PACS to a 50 MB batch at the per-request timeout.
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
STOW_REQUEST_SECONDS = Histogram(
    "relaypacs_stow_request_seconds",
    "STOW-RS requests to a PACS, by destination and outcome (ok, unavailable, rejected, "
    "not_supported, error).",
    ["destination", "outcome"],
    buckets=REQUEST_BUCKETS,
)
QIDO_REQUEST_SECONDS = Histogram(
    "relaypacs_qido_request_seconds",
    "Listings of a study's instances that confirm receipt (QIDO-RS, or Orthanc's tools/find "
    "where the destination has an Orthanc URL), by destination.",
    ["destination"],
    buckets=REQUEST_BUCKETS,
)

F = TypeVar("F", bound=Callable[..., Any])


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, PacsUnavailable):
        return "unavailable"
    if isinstance(exc, PacsRejected):
        return "rejected"
    if type(exc).__name__ in ("StowNotAvailable", "QidoNotAvailable"):
        return "not_supported"
    return "error"


def stow_timed(method: F) -> F:
    """Decorates a client method whose ``self.target.name`` is the destination."""

    @functools.wraps(method)
    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        failure: BaseException | None = None
        try:
            return method(self, *args, **kwargs)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            STOW_REQUEST_SECONDS.labels(
                destination=self.target.name, outcome=_outcome(failure)
            ).observe(time.monotonic() - started)

    return timed  # type: ignore[return-value]


def qido_timed(method: F) -> F:
    @functools.wraps(method)
    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        try:
            return method(self, *args, **kwargs)
        finally:
            QIDO_REQUEST_SECONDS.labels(destination=self.target.name).observe(
                time.monotonic() - started
            )

    return timed  # type: ignore[return-value]


class PacsCollector(Collector):
    """``relaypacs_pacs_up{destination}``: 1 when the latest health probe of the destination
    succeeded, 0 when it failed. Probes are shared with /api/v1/health (at most one per
    destination per HEALTH_PROBE_INTERVAL_SECONDS, whoever asks); a destination whose first
    probe has not finished yet counts as down until it has."""

    def collect(self) -> Iterable[Metric]:
        from .selectors import pacs_targets
        from .services import pacs_health_probes

        up = GaugeMetricFamily(
            "relaypacs_pacs_up",
            "Whether the PACS destination answered its latest health probe (1) or not (0).",
            labels=["destination"],
        )
        targets = pacs_targets()
        for target, health in zip(targets, pacs_health_probes(targets=targets), strict=True):
            up.add_metric([target.name], 1.0 if health["state"] == "ok" else 0.0)
        yield up
