"""Errors raised by the PACS gateway; re-exported by ``pacs.services`` for callers.

They live in their own module because both the clients (which detect them) and the
services (which callers import them from) need them, and the clients must not import the
services.
"""

from __future__ import annotations

import functools
from typing import Any

from relaypacs.errors import ApplicationError


class PacsUnavailable(ApplicationError):
    """The PACS could not be reached or is temporarily unable to answer: try again later.

    Raised on connection errors, timeouts, HTTP 5xx, 408 and 429.
    """

    def __init__(self, *, pacs: str, detail: str, http_status: int | None = None) -> None:
        super().__init__(
            "pacs_unavailable",
            "The hospital PACS could not be reached.",
            "RelayPACS keeps the images and tries again automatically. If this lasts, check "
            "that the PACS is running and that the network between RelayPACS and the PACS "
            "works.",
            status_code=503,
            extra={"pacs": pacs, "detail": detail, "http_status": http_status},
        )
        self.pacs = pacs
        self.detail = detail
        self.http_status = http_status

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        # Keyword-only __init__: pickle (Celery retries) needs to be told how to rebuild.
        return (
            functools.partial(
                type(self), pacs=self.pacs, detail=self.detail, http_status=self.http_status
            ),
            (),
        )


class PacsNotListing(PacsUnavailable):
    """The PACS took a STOW-RS request (2xx) without saying per instance what it stored,
    and QIDO-RS does not list all of it yet: send those again later (the PACS keeps one
    copy), as for any PacsUnavailable.
    """

    def __init__(self, *, pacs: str, detail: str, http_status: int | None = None) -> None:
        ApplicationError.__init__(
            self,
            "pacs_not_listing",
            "The hospital PACS took the images but does not list all of them yet.",
            "RelayPACS sends the missing images again and checks once more automatically. "
            "If this lasts, ask your PACS administrator to check the PACS.",
            status_code=503,
            extra={"pacs": pacs, "detail": detail, "http_status": http_status},
        )
        self.pacs = pacs
        self.detail = detail
        self.http_status = http_status


_REJECTED_HINTS = {
    401: "Check the PACS username, password or token configured in RelayPACS.",
    403: "Check the PACS username, password or token configured in RelayPACS, and that "
    "this account may store images on the PACS.",
    404: "Check the PACS address (DICOMweb or Orthanc URL) configured in RelayPACS.",
    405: "Check the PACS address (DICOMweb or Orthanc URL) configured in RelayPACS.",
    413: "The PACS refused a request this large: lower PACS_STOW_BATCH_BYTES or raise the "
    "PACS request size limit.",
}
_REJECTED_DEFAULT_HINT = (
    "Check the PACS address and credentials configured in RelayPACS; the PACS log tells "
    "why it refused the request."
)


class PacsRejected(ApplicationError):
    """The PACS refused the whole request and trying again unchanged will not help.

    Raised on HTTP 4xx answers that carry no per-instance result (401/403 above all), and
    on a PACS configuration RelayPACS cannot use (invalid URL, missing certificate file).
    """

    def __init__(self, *, pacs: str, detail: str, http_status: int | None = None) -> None:
        if http_status is None:
            message = "The hospital PACS configuration cannot be used."
            hint = "Check the PACS address, certificate and key files configured in RelayPACS."
        else:
            message = f"The hospital PACS refused the request (HTTP {http_status})."
            hint = _REJECTED_HINTS.get(http_status, _REJECTED_DEFAULT_HINT)
        super().__init__(
            "pacs_rejected",
            message,
            hint,
            status_code=502,
            extra={"pacs": pacs, "detail": detail, "http_status": http_status},
        )
        self.pacs = pacs
        self.detail = detail
        self.http_status = http_status

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (
            functools.partial(
                type(self), pacs=self.pacs, detail=self.detail, http_status=self.http_status
            ),
            (),
        )


class InstanceSourceError(ApplicationError):
    """An instance stream could not be read or did not hold exactly its declared size.

    This is a local fault (the stored upload is damaged or the caller passed a wrong
    size), not the PACS's; the request that was being sent is abandoned.
    """

    def __init__(self, *, sop_instance_uid: str, detail: str) -> None:
        super().__init__(
            "instance_source_invalid",
            "An image kept by RelayPACS could not be read for sending to the PACS.",
            "The upload may be damaged on the RelayPACS server; upload the study again.",
            status_code=500,
            extra={"sop_instance_uid": sop_instance_uid, "detail": detail},
        )
        self.sop_instance_uid = sop_instance_uid
        self.detail = detail

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (
            functools.partial(
                type(self), sop_instance_uid=self.sop_instance_uid, detail=self.detail
            ),
            (),
        )
