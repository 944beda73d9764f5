"""Reads: which PACS targets exist, how to use them, what was delivered, are they up."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, TypedDict

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from pacs.clients.dicomweb import DicomwebClient
from pacs.clients.orthanc import OrthancClient
from pacs.errors import PacsRejected, PacsUnavailable
from pacs.models import DeliveredInstance, PacsDestination

logger = logging.getLogger(__name__)

PACS_MODES = ("failover", "all")
# UIDs per query of delivered_recently: well below SQLite's bound-parameter limit.
UID_QUERY_BATCH = 500


@dataclass(frozen=True)
class PacsTarget:
    """Everything needed to send to one PACS; plain data, safe to pass to a worker.

    ``key`` is stable across restarts and renames ("env:<PACS_NAME>" or "db:<pk>") and
    is what receipts are recorded under. Secrets are left out of ``repr``.
    """

    key: str
    name: str
    dicomweb_url: str = ""
    orthanc_url: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    ca_bundle: str = ""
    client_cert: str = ""
    client_key: str = ""
    timeout_seconds: float = 120.0


class PacsHealth(TypedDict):
    name: str
    state: Literal["ok", "degraded"]
    detail: str


def environment_target() -> PacsTarget | None:
    """The PACS configured by settings (PACS_*), or None when no URL is set."""
    if not settings.PACS_DICOMWEB_URL and not settings.PACS_ORTHANC_URL:
        return None
    return PacsTarget(
        key=f"env:{settings.PACS_NAME}",
        name=settings.PACS_NAME,
        dicomweb_url=settings.PACS_DICOMWEB_URL,
        orthanc_url=settings.PACS_ORTHANC_URL,
        username=settings.PACS_USERNAME,
        password=settings.PACS_PASSWORD,
        token=settings.PACS_TOKEN,
        ca_bundle=settings.PACS_CA_BUNDLE,
        client_cert=settings.PACS_CLIENT_CERT,
        client_key=settings.PACS_CLIENT_KEY,
        timeout_seconds=float(settings.PACS_TIMEOUT_SECONDS),
    )


def destination_target(destination: PacsDestination) -> PacsTarget:
    return PacsTarget(
        key=f"db:{destination.pk}",
        name=destination.name,
        dicomweb_url=destination.dicomweb_url,
        orthanc_url=destination.orthanc_url,
        username=destination.username,
        password=destination.password,
        token=destination.token,
        ca_bundle=destination.ca_bundle,
        client_cert=destination.client_cert,
        client_key=destination.client_key,
        timeout_seconds=float(destination.timeout_seconds),
    )


def pacs_targets() -> list[PacsTarget]:
    """All targets in the order to try them.

    The environment-configured PACS first (when PACS_DICOMWEB_URL or PACS_ORTHANC_URL is
    set), then enabled admin destinations by priority (lower first), then by id.
    Destinations without any URL are skipped.
    """
    targets: list[PacsTarget] = []
    env_target = environment_target()
    if env_target is not None:
        targets.append(env_target)
    destinations = PacsDestination.objects.filter(enabled=True).order_by("priority", "pk")
    targets.extend(
        destination_target(destination)
        for destination in destinations
        if destination.dicomweb_url or destination.orthanc_url
    )
    return targets


def pacs_target(*, key: str) -> PacsTarget | None:
    """The current target with this key, or None (removed, disabled, or renamed env PACS)."""
    return next((target for target in pacs_targets() if target.key == key), None)


def pacs_mode() -> str:
    """The delivery mode: "failover" (the first target that takes the study) or "all".

    Raises ImproperlyConfigured for any other PACS_MODE (the system check reports it at
    start-up too).
    """
    mode = str(settings.PACS_MODE).strip().lower()
    if mode not in PACS_MODES:
        raise ImproperlyConfigured(
            f"PACS_MODE must be one of {', '.join(PACS_MODES)}, not {settings.PACS_MODE!r}."
        )
    return mode


def delivered_recently(
    *, target_key: str, sop_instance_uids: Iterable[str], since: datetime
) -> set[str]:
    """Those of ``sop_instance_uids`` delivered to ``target_key`` at or after ``since``."""
    uids = sorted(set(sop_instance_uids))
    delivered: set[str] = set()
    for start in range(0, len(uids), UID_QUERY_BATCH):
        delivered.update(
            DeliveredInstance.objects.filter(
                target_key=target_key,
                sop_instance_uid__in=uids[start : start + UID_QUERY_BATCH],
                delivered_at__gte=since,
            ).values_list("sop_instance_uid", flat=True)
        )
    return delivered


def pacs_health(*, target: PacsTarget, timeout: float = 3.0) -> PacsHealth:
    """A quick probe of one target; never raises.

    DICOMweb targets get a QIDO-RS query for a study that does not exist (no patient data
    travels); when DICOMweb is missing there (404/405/501) or the target is REST-only,
    Orthanc's /system is asked instead. "ok" means the PACS answered with success.
    ``detail`` is a sentence that names no host, address or software version (it is shown
    to administrators); the technical reason of a failure goes to the log.
    """

    def health(state: Literal["ok", "degraded"], detail: str) -> PacsHealth:
        return {"name": target.name, "state": state, "detail": detail}

    try:
        dicomweb_detail = ""
        if target.dicomweb_url:
            with DicomwebClient(target, timeout=timeout) as dicomweb:
                status = dicomweb.probe()
            if 200 <= status < 300:
                return health("ok", "The PACS answered a DICOMweb query.")
            if status in (401, 403):
                return health(
                    "degraded", f"The PACS refused the configured credentials (HTTP {status})."
                )
            if status not in (404, 405, 501) or not target.orthanc_url:
                return health(
                    "degraded", f"The PACS answered a DICOMweb query with an error (HTTP {status})."
                )
            dicomweb_detail = f" (its DICOMweb address answered HTTP {status})"
        if target.orthanc_url:
            with OrthancClient(target, timeout=timeout) as orthanc:
                orthanc.system()
            return health("ok", f"The PACS answered through its Orthanc REST API{dicomweb_detail}.")
        return health("degraded", "No DICOMweb or Orthanc URL is configured.")
    except (PacsUnavailable, PacsRejected) as exc:
        logger.warning("health probe of PACS %s failed: %s", target.name, exc.detail)
        return health("degraded", exc.message)
    except Exception:  # a health probe must never break the page that shows it
        logger.exception("health probe of PACS %s failed unexpectedly", target.name)
        return health("degraded", "The PACS could not be checked because of an unexpected error.")
