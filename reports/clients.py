"""The reports app's one client of the PACS: QIDO-RS and WADO-RS for report objects.

It speaks DICOMweb through dicomweb-client (which builds whole request bodies in memory, so
study bytes keep going through pacs' streaming STOW-RS writer; here only small report
objects are read). It uses the same targets and credentials as ``pacs`` (PacsTarget from
pacs.selectors). Errors become pacs.errors.PacsUnavailable (try later) or PacsRejected
(fix the configuration), with no response body in them (a PACS may echo patient data).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import requests
from django.conf import settings
from pydicom import Dataset

from pacs.clients.base import pacs_session
from pacs.errors import PacsRejected, PacsUnavailable
from pacs.selectors import PacsTarget

# The report SOP classes the synchronisation reads, and only these: Basic, Enhanced and
# Comprehensive SR and Encapsulated PDF. Dose SRs (88.67/.68), Key Object Selection and
# every other object are never taken for a report.
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
SR_CLASSES = frozenset({BASIC_TEXT_SR, ENHANCED_SR, COMPREHENSIVE_SR})
REPORT_CLASSES = (BASIC_TEXT_SR, ENHANCED_SR, COMPREHENSIVE_SR, ENCAPSULATED_PDF)
# A PACS that does not answer a query of report objects in this time is treated as down
# for this cycle; the next cycle asks again.
QUERY_TIMEOUT_SECONDS = 30.0
# dicomweb-client logs every request, with its UIDs, at INFO: only its warnings are ours.
logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
# Keep technical details attached to errors short: they end up in logs.
DETAIL_MAX_CHARS = 200


class ReportObjectUnreadable(Exception):
    """One report object the PACS holds cannot be read (not DICOM pydicom can parse, no
    document, not a PDF). Its message names the kind of error only, never a value."""


@dataclass(frozen=True)
class ReportObjectRef:
    """A report object the PACS lists: enough to retrieve it by WADO-RS."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


def parse_report_objects(results: Sequence[dict[str, Any]]) -> list[ReportObjectRef]:
    """QIDO-RS JSON → the report objects in it; other SOP classes are dropped, also when
    the PACS ignored the SOP Class filter of the query."""
    refs = []
    for item in results:
        ref = ReportObjectRef(
            study_instance_uid=_value(item, "0020000D"),
            series_instance_uid=_value(item, "0020000E"),
            sop_instance_uid=_value(item, "00080018"),
            sop_class_uid=_value(item, "00080016"),
        )
        if ref.sop_class_uid in REPORT_CLASSES and all(
            (ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid)
        ):
            refs.append(ref)
    return refs


class ReportArchiveClient:
    """QIDO-RS/WADO-RS of report objects on one PACS target; use as a context manager.

    Raises PacsRejected at construction for a target without a DICOMweb URL.
    """

    def __init__(self, target: PacsTarget) -> None:
        from dicomweb_client import DICOMwebClient

        if not target.dicomweb_url:
            raise PacsRejected(pacs=target.name, detail="no DICOMweb URL is configured")
        self.target = target
        self.requests = 0
        self._session = pacs_session(target)
        self._client = DICOMwebClient(
            url=target.dicomweb_url,
            session=self._session,
            timeout=min(QUERY_TIMEOUT_SECONDS, target.timeout_seconds),
            callback=self._count,
        )

    def _count(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.requests += 1

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._session.close()

    def _failure(self, exc: Exception, what: str) -> PacsUnavailable | PacsRejected:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        detail = f"{what}: {type(exc).__name__}" + (f" HTTP {status}" if status else "")
        detail = detail[:DETAIL_MAX_CHARS]
        if status is not None and status < 500 and status not in (408, 429):
            return PacsRejected(pacs=self.target.name, detail=detail, http_status=status)
        return PacsUnavailable(pacs=self.target.name, detail=detail, http_status=status)

    def report_objects(self, *, study_instance_uids: Sequence[str]) -> list[ReportObjectRef]:
        """The report objects of these studies, in one QIDO-RS query (UID list matching,
        comma-separated), following the PACS's pages. Raises PacsUnavailable/PacsRejected.

        Pages are followed until an empty one (``get_remaining``), which costs one empty
        request after each non-empty answer: a PACS may cap its answers below any limit we
        ask for without saying so (Orthanc's LimitFindResults), and a short page read as the
        last would lose reports. Measured at a few dozen requests per 10,000 open reports
        (bench/RESULTS.md), so kept.
        """
        if not study_instance_uids:
            return []
        search_filters = {
            "StudyInstanceUID": ",".join(study_instance_uids),
            "SOPClassUID": ",".join(REPORT_CLASSES),
        }
        modalities = [m.strip() for m in settings.REPORT_SYNC_SERIES_MODALITIES if m.strip()]
        try:
            if modalities:
                # Series first, by Modality (a series attribute every PACS indexes), so
                # that the instance query reads only report-like series: a PACS that
                # matches SOP Class UID by opening each instance file (Orthanc 1.10) would
                # otherwise read every image of every study asked about.
                series = self._client.search_for_series(
                    search_filters={
                        "StudyInstanceUID": ",".join(study_instance_uids),
                        "Modality": ",".join(modalities),
                    },
                    fields=["StudyInstanceUID", "SeriesInstanceUID", "Modality"],
                    get_remaining=True,
                )
                series_uids = sorted({_value(item, "0020000E") for item in series} - {""})
                if not series_uids:
                    return []
                search_filters["SeriesInstanceUID"] = ",".join(series_uids)
            results = self._client.search_for_instances(
                search_filters=search_filters,
                fields=["StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID"],
                get_remaining=True,
            )
        except (requests.RequestException, ValueError) as exc:
            raise self._failure(exc, "QIDO-RS of report objects") from exc
        return parse_report_objects(results)

    def retrieve(self, ref: ReportObjectRef) -> Dataset:
        """One report object by WADO-RS. Raises PacsUnavailable/PacsRejected when the PACS
        cannot be asked, ReportObjectUnreadable when its answer is not DICOM that pydicom
        reads (that object only: the PACS answered)."""
        try:
            dataset: Dataset = self._client.retrieve_instance(
                ref.study_instance_uid, ref.series_instance_uid, ref.sop_instance_uid
            )
        except requests.RequestException as exc:
            raise self._failure(exc, "WADO-RS of a report object") from exc
        except Exception as exc:  # pydicom raises many kinds on malformed objects
            raise ReportObjectUnreadable(type(exc).__name__) from None
        return dataset
