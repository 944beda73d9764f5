"""Orthanc REST client: the fallback when a target has no usable STOW-RS, and /system.

The only code that speaks Orthanc's own REST API to a PACS.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from pacs.clients.base import DicomPart, PacsHttpClient, SizedBody, iter_part_bytes
from pacs.errors import PacsRejected
from pacs.metrics import qido_timed

logger = logging.getLogger(__name__)

# Statuses of POST /instances that concern this one file (Orthanc answers 400 for a file
# it cannot parse); any other 4xx concerns the whole configuration.
INSTANCE_FAILURE_STATUSES = frozenset({400, 415, 422})
# tools/find pages: bounded answers even for a study of thousands of instances.
FIND_PAGE_SIZE = 1000
# Paging stops here whatever the server answers: far more instances than any study holds.
FIND_MAX_INSTANCES = 1_000_000
STORED_STATUSES = frozenset({"Success", "AlreadyStored"})


@dataclass(frozen=True)
class RestStoreResponse:
    """Orthanc's answer to one POST /instances."""

    stored: bool
    orthanc_id: str | None
    status: str
    failure_reason: str | None


class OrthancClient(PacsHttpClient):
    """Orthanc REST calls against ``target.orthanc_url``."""

    @property
    def base_url(self) -> str:
        return self.target.orthanc_url.rstrip("/")

    def instance_store(self, *, part: DicomPart) -> RestStoreResponse:
        """POST one Part 10 file to /instances, streamed unchanged in 1 MiB blocks.

        "AlreadyStored" counts as stored (Orthanc keeps the first copy), so re-sending is
        harmless. A file Orthanc cannot read comes back with stored=False and its reason.
        Raises PacsUnavailable, PacsRejected (auth, wrong URL, ...), InstanceSourceError.
        """
        body = SizedBody(iter_part_bytes(part), part.size)
        try:
            response = self.request(
                "POST",
                f"{self.base_url}/instances",
                data=body,
                headers={"Content-Type": "application/dicom", "Accept": "application/json"},
            )
        finally:
            body.close()
        if response.status_code in INSTANCE_FAILURE_STATUSES:
            return RestStoreResponse(
                stored=False,
                orthanc_id=None,
                status=f"HTTP {response.status_code}",
                failure_reason=self._error_reason(response),
            )
        self.raise_for_status(response, what="Orthanc POST /instances")
        answer = self._json(response)
        if not isinstance(answer, dict):
            # Several results means Orthanc unpacked an archive: not a single Part 10 file.
            return RestStoreResponse(
                stored=False,
                orthanc_id=None,
                status="unexpected",
                failure_reason="The PACS did not take it as one DICOM file.",
            )
        status = str(answer.get("Status", ""))
        orthanc_id = answer.get("ID")
        if status in STORED_STATUSES and isinstance(orthanc_id, str):
            return RestStoreResponse(
                stored=True, orthanc_id=orthanc_id, status=status, failure_reason=None
            )
        return RestStoreResponse(
            stored=False,
            orthanc_id=orthanc_id if isinstance(orthanc_id, str) else None,
            status=status,
            failure_reason=f"The PACS did not store it (status {status or 'missing'}).",
        )

    def instance_sop_uid(self, *, orthanc_id: str) -> str | None:
        """The SOP Instance UID Orthanc indexed for one of its instances (None if gone)."""
        response = self.request("GET", f"{self.base_url}/instances/{quote(orthanc_id, safe='')}")
        if response.status_code == 404:
            return None
        self.raise_for_status(response, what="Orthanc GET /instances/{id}")
        answer = self._json(response)
        tags = answer.get("MainDicomTags") if isinstance(answer, dict) else None
        uid = tags.get("SOPInstanceUID") if isinstance(tags, dict) else None
        return uid.strip() if isinstance(uid, str) else None

    @qido_timed
    def study_sop_instance_uids(
        self,
        *,
        study_instance_uid: str,
        expected: Collection[str] = (),
        page_size: int = FIND_PAGE_SIZE,
    ) -> set[str]:
        """SOP Instance UIDs Orthanc holds for a study, one tools/find request per page.

        One request per page of instances instead of one tools/lookup per instance, which
        matters for a study of thousands of images on a remote Orthanc. Pages until one is
        empty, every one of ``expected`` was listed, or a page brings nothing new; a short
        page does not end it (Orthanc's LimitFindInstances caps pages without saying so).
        """
        wanted = set(expected)
        found: set[str] = set()
        since = 0
        while since < FIND_MAX_INSTANCES:
            response = self.request(
                "POST",
                f"{self.base_url}/tools/find",
                json={
                    "Level": "Instance",
                    "Query": {"StudyInstanceUID": study_instance_uid},
                    "Expand": True,
                    "Limit": page_size,
                    "Since": since,
                },
            )
            self.raise_for_status(response, what="Orthanc tools/find")
            page = self._json(response)
            if not isinstance(page, list):
                return found
            before = len(found)
            for item in page:
                tags = item.get("MainDicomTags") if isinstance(item, dict) else None
                uid = tags.get("SOPInstanceUID") if isinstance(tags, dict) else None
                if isinstance(uid, str) and uid.strip():
                    found.add(uid.strip())
            if not page or len(found) == before or (wanted and wanted <= found):
                return found
            since += len(page)
        return found

    def system(self) -> dict[str, Any]:
        """Orthanc's /system document (name, version); raises like every call here."""
        response = self.request("GET", f"{self.base_url}/system")
        self.raise_for_status(response, what="Orthanc /system")
        answer = self._json(response)
        return answer if isinstance(answer, dict) else {}

    def _json(self, response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise PacsRejected(
                pacs=self.target.name,
                detail="Orthanc answer is not JSON; is this URL an Orthanc server?",
                http_status=response.status_code,
            ) from exc

    @staticmethod
    def _error_reason(response: requests.Response) -> str:
        # Orthanc's error documents name the parsing problem, never patient data.
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if isinstance(answer, dict):
            detail = answer.get("Details") or answer.get("Message")
            if isinstance(detail, str) and detail:
                return f"The PACS could not read it: {detail[:200]}"
        return f"The PACS could not read it (HTTP {response.status_code})."
