"""DICOMweb client (STOW-RS, QIDO-RS): the only code that speaks DICOMweb to a PACS.

It reports what the PACS said; deciding what that means for an upload (batches,
fallbacks, unacknowledged instances) is the job of ``pacs.services``.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Collection, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

import requests

from pacs.clients.base import (
    DicomPart,
    PacsHttpClient,
    SizedBody,
    is_retryable_status,
    iter_part_bytes,
)
from pacs.errors import PacsRejected, PacsUnavailable
from pacs.metrics import qido_timed, stow_timed

logger = logging.getLogger(__name__)

# DICOM JSON tags of the Store Instances Response Module (PS3.18 §10.5.3).
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
RETRIEVE_URL = "00081190"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
SOP_INSTANCE_UID = "00080018"

# Statuses of a STOW-RS request meaning "this server has no STOW-RS here".
STOW_UNAVAILABLE_STATUSES = frozenset({404, 405, 501})
# QIDO-RS pages: bounded answers even for a study of thousands of instances.
QIDO_PAGE_SIZE = 1000
# Paging stops here whatever the server answers: far more instances than any study holds,
# so a server that keeps inventing new answers cannot keep a worker busy forever.
QIDO_MAX_INSTANCES = 1_000_000
# A study UID that exists nowhere: a query for it proves QIDO-RS works without fetching
# any patient data.
HEALTH_PROBE_STUDY_UID = "2.25.0"

# FailureReason / WarningReason values of PS3.18 Table 10.5.3-1 (and the general
# "duplicate SOP instance" status some archives use for a re-sent instance).
REASONS = {
    0x0110: "processing failure",
    0x0111: "duplicate SOP instance",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
    0xA700: "out of resources",
    0xA900: "data set does not match SOP class",
    0xB000: "coercion of data elements",
    0xB006: "elements discarded",
    0xB007: "data set does not match SOP class",
    0xC000: "cannot understand",
    0xC122: "transfer syntax not supported",
}
DUPLICATE_SOP_INSTANCE = 0x0111


class StowNotAvailable(Exception):
    """The server answered a STOW-RS request with 404, 405 or 501."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"STOW-RS answered HTTP {status_code}")
        self.status_code = status_code


class QidoNotAvailable(Exception):
    """The server answered a QIDO-RS request with 404, 405 or 501."""

    def __init__(self, status_code: int) -> None:
        super().__init__(f"QIDO-RS answered HTTP {status_code}")
        self.status_code = status_code


@dataclass(frozen=True)
class StowResponse:
    """What a STOW-RS answer says, instance by instance.

    ``stored`` maps SOP Instance UID to its RetrieveURL (None when the PACS gave none);
    ``failed`` maps SOP Instance UID to a readable reason. An instance that was sent and
    is in neither is not acknowledged: the caller decides what that means.
    """

    status_code: int
    stored: dict[str, str | None] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)


def reason_text(code: int) -> str:
    name = REASONS.get(code)
    return f"0x{code:04X} {name}" if name else f"0x{code:04X}"


def _values(element: Any) -> list[Any]:
    if isinstance(element, dict):
        value = element.get("Value")
        if isinstance(value, list):
            return value
    return []


def _first_string(item: dict[str, Any], tag: str) -> str | None:
    for value in _values(item.get(tag)):
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _first_int(item: dict[str, Any], tag: str) -> int | None:
    for value in _values(item.get(tag)):
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().isdigit():
            return int(value.strip())
    return None


def _sequence_items(dataset: dict[str, Any], tag: str) -> Iterator[dict[str, Any]]:
    for item in _values(dataset.get(tag)):
        if isinstance(item, dict):
            yield {key.upper(): value for key, value in item.items()}


def parse_store_response(status_code: int, body: bytes) -> StowResponse | None:
    """Parse a Store Instances Response in DICOM JSON or DICOM XML (PS3.19 Native DICOM
    Model, ``application/dicom+xml``, which PS3.18 allows); None when the body is neither.

    A body holding at least one of the two SOP sequences counts as a per-instance answer,
    even when both are empty (Orthanc answers a batch of unreadable parts with 400 and two
    empty sequences).
    """
    dataset = _json_dataset(body)
    if dataset is None:
        dataset = _xml_dataset(body)
    if dataset is None:
        return None
    return _store_response(status_code, dataset)


def _json_dataset(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    if isinstance(document, list) and len(document) == 1:
        document = document[0]
    if not isinstance(document, dict):
        return None
    return {key.upper(): value for key, value in document.items()}


def _xml_dataset(body: bytes) -> dict[str, Any] | None:
    """A Native DICOM Model document as the DICOM JSON structure, or None.

    Documents with a DOCTYPE are refused unread: a store answer needs none, and entity
    declarations are how XML bombs and external entities get in.
    """
    text = body.lstrip()
    if not text.startswith(b"<") or b"<!DOCTYPE" in text.upper():
        return None
    try:
        root = ElementTree.fromstring(text)  # noqa: S314 - no DOCTYPE, so no entities
        if _local_name(root.tag) != "NativeDicomModel":
            return None
        return _xml_attributes(root)
    except (ElementTree.ParseError, RecursionError, ValueError):
        return None


def _local_name(tag: str) -> str:
    # "{http://dicom.nema.org/PS3.19/models/NativeDICOM}DicomAttribute" -> "DicomAttribute";
    # some servers leave the namespace out.
    return tag.rpartition("}")[2]


def _xml_attributes(element: ElementTree.Element) -> dict[str, Any]:
    dataset: dict[str, Any] = {}
    for attribute in element:
        if _local_name(attribute.tag) != "DicomAttribute":
            continue
        tag = (attribute.get("tag") or "").strip().upper()
        if not tag:
            continue
        values: list[Any] = []
        for child in attribute:
            kind = _local_name(child.tag)
            if kind == "Value":
                values.append((child.text or "").strip())
            elif kind == "Item":
                values.append(_xml_attributes(child))
        dataset[tag] = {"vr": attribute.get("vr", ""), "Value": values}
    return dataset


def _store_response(status_code: int, dataset: dict[str, Any]) -> StowResponse | None:
    if REFERENCED_SOP_SEQUENCE not in dataset and FAILED_SOP_SEQUENCE not in dataset:
        return None
    stored: dict[str, str | None] = {}
    failed: dict[str, str] = {}
    warnings: dict[str, str] = {}
    for item in _sequence_items(dataset, REFERENCED_SOP_SEQUENCE):
        uid = _first_string(item, REFERENCED_SOP_INSTANCE_UID)
        if uid is None:
            continue
        stored[uid] = _first_string(item, RETRIEVE_URL)
        warning = _first_int(item, WARNING_REASON)
        if warning is not None:
            warnings[uid] = reason_text(warning)
    for item in _sequence_items(dataset, FAILED_SOP_SEQUENCE):
        uid = _first_string(item, REFERENCED_SOP_INSTANCE_UID)
        if uid is None or uid in stored:
            continue
        code = _first_int(item, FAILURE_REASON)
        if code == DUPLICATE_SOP_INSTANCE:
            # The archive already holds this SOP instance (a re-send after a crash):
            # the goal, the instance being in the PACS, is met.
            stored[uid] = None
            warnings[uid] = reason_text(code)
            continue
        failed[uid] = (
            f"The PACS refused it (failure reason {reason_text(code)})."
            if code is not None
            else "The PACS refused it without giving a reason."
        )
    return StowResponse(status_code=status_code, stored=stored, failed=failed, warnings=warnings)


class DicomwebClient(PacsHttpClient):
    """STOW-RS and QIDO-RS against ``target.dicomweb_url``."""

    @property
    def base_url(self) -> str:
        return self.target.dicomweb_url.rstrip("/")

    @stow_timed
    def instances_stow(self, *, parts: Sequence[DicomPart]) -> StowResponse:
        """POST ``parts`` as one STOW-RS request, streaming them as the body.

        Each part's bytes are read in 1 MiB blocks while sending, so memory does not grow
        with the batch, and are sent unchanged; the body's length is declared up front
        (Content-Length, from the parts' sizes). Returns the per-instance answer (DICOM JSON or
        DICOM XML) for any status that carries one (200, 202, 400, 409, ...); a 2xx
        without one (no body, or one that cannot be read) comes back with nothing stored
        or failed, for the caller to ask QIDO-RS.

        Raises StowNotAvailable (404/405/501), PacsUnavailable (network, timeout, 5xx,
        408, 429), PacsRejected (any other 4xx without per-instance answer, e.g. 401),
        InstanceSourceError (a stream that cannot be read or has the wrong size).
        """
        boundary = f"relaypacs-{uuid.uuid4().hex}"
        body = self._multipart_body(parts, boundary)
        try:
            response = self.request(
                "POST",
                f"{self.base_url}/studies",
                data=body,
                headers={
                    "Content-Type": (
                        f'multipart/related; type="application/dicom"; boundary={boundary}'
                    ),
                    "Accept": "application/dicom+json",
                },
            )
        finally:
            body.close()  # closes the instance stream if the server stopped us early
        status = response.status_code
        if status in STOW_UNAVAILABLE_STATUSES:
            raise StowNotAvailable(status)
        if is_retryable_status(status):
            raise PacsUnavailable(
                pacs=self.target.name, detail=f"STOW-RS answered HTTP {status}", http_status=status
            )
        if status in (401, 403, 407):
            raise PacsRejected(
                pacs=self.target.name, detail=f"STOW-RS answered HTTP {status}", http_status=status
            )
        parsed = parse_store_response(status, response.content)
        if parsed is not None:
            return parsed
        if 200 <= status < 300:
            return StowResponse(status_code=status)
        raise PacsRejected(
            pacs=self.target.name,
            detail=f"STOW-RS answered HTTP {status} without a per-instance answer",
            http_status=status,
        )

    @staticmethod
    def _multipart_body(parts: Sequence[DicomPart], boundary: str) -> SizedBody:
        head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        tail = f"--{boundary}--\r\n".encode("ascii")

        def blocks() -> Generator[bytes, None, None]:
            for part in parts:
                yield head
                yield from iter_part_bytes(part)
                yield b"\r\n"
            yield tail

        length = sum(len(head) + part.size + 2 for part in parts) + len(tail)
        return SizedBody(blocks(), length)

    @qido_timed
    def study_sop_instance_uids(
        self,
        *,
        study_instance_uid: str,
        expected: Collection[str] = (),
        page_size: int = QIDO_PAGE_SIZE,
    ) -> set[str]:
        """SOP Instance UIDs the PACS lists for a study (empty when it does not know it).

        Pages through QIDO-RS by offset until a page is empty, every one of ``expected``
        was listed, or a page brings nothing new (a server that ignores offset). A page
        shorter than ``page_size`` does not end the listing: many PACS cap pages below
        what was asked (Azure's DICOM service at 200, others at 100) without saying so.
        Raises QidoNotAvailable (404/405/501), PacsUnavailable, PacsRejected.
        """
        url = f"{self.base_url}/studies/{quote(study_instance_uid, safe='')}/instances"
        wanted = set(expected)
        found: set[str] = set()
        offset = 0
        while offset < QIDO_MAX_INSTANCES:
            response = self.request(
                "GET",
                url,
                params={"includefield": SOP_INSTANCE_UID, "limit": page_size, "offset": offset},
                headers={"Accept": "application/dicom+json"},
            )
            if response.status_code == 204:
                return found
            if response.status_code in (404, 405, 501):
                if offset and response.status_code == 404:
                    return found  # some servers answer 404 for an offset past the end
                raise QidoNotAvailable(response.status_code)
            self.raise_for_status(response, what="QIDO-RS")
            page = self._json_list(response)
            before = len(found)
            for item in page:
                if isinstance(item, dict):
                    normalized = {key.upper(): value for key, value in item.items()}
                    uid = _first_string(normalized, SOP_INSTANCE_UID)
                    if uid:
                        found.add(uid)
            if not page or len(found) == before or (wanted and wanted <= found):
                return found
            offset += len(page)
        return found

    def _json_list(self, response: requests.Response) -> list[Any]:
        if not response.content.strip():
            return []
        try:
            document = response.json()
        except ValueError as exc:
            raise PacsRejected(
                pacs=self.target.name,
                detail="QIDO-RS answer is not DICOM JSON",
                http_status=response.status_code,
            ) from exc
        return document if isinstance(document, list) else []

    def probe(self) -> int:
        """Status of a minimal QIDO-RS query (no patient data is fetched).

        Raises PacsUnavailable/PacsRejected only for transport failures.
        """
        response = self.request(
            "GET",
            f"{self.base_url}/studies",
            params={"StudyInstanceUID": HEALTH_PROBE_STUDY_UID},
            headers={"Accept": "application/dicom+json"},
        )
        return response.status_code
