"""The clinic's note and urgency, carried into the PACS for the radiologist who reads there.

What a clinic types on the phone (the clinical note, the service level) would otherwise
reach only our database. For each study of an upload, RelayPACS adds one small object of
its own to that study: a Basic Text SR titled "Clinical information from the sending
clinic", in a series of its own, holding the note, the service level in words, the sending
facility, the sender and the time it was sent. The received images are not touched.

It is made when the upload has a clinical note or a service level other than routine (a
routine upload without a note has nothing to tell the reader), unless
``PACS_CLINICAL_NOTES_OBJECT`` is off. The patient and study modules are copied from the
header of the study's first instance, so the PACS files it under the same patient and
study. Its UIDs come from ``DICOM_UID_ROOT``, derived from the upload and the study, and
its dates from when the upload was sent: processing the upload again makes the same
object, byte for byte. CompletionFlag PARTIAL and VerificationFlag UNVERIFIED: it is
information for the reader, not a report (and the report synchronisation knows it by its
SOP Instance UID, recorded on its UploadFile with ``added_by_relay``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from django.conf import settings
from django.utils import timezone
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, BasicTextSRStorage, ExplicitVRLittleEndian, generate_uid

from . import storage
from .models import FileKind, ServiceLevel, UploadFile, UploadSession

logger = logging.getLogger(__name__)

TITLE = "Clinical information from the sending clinic"
SERIES_DESCRIPTION = "Clinical information from the sending clinic (RelayPACS)"  # LO: 64 at most
FILE_NAME = "Clinical information from the sending clinic (added by RelayPACS)"
FILE_REASON = "added by RelayPACS: the clinic's note and service level, for the radiologist"
# Far above the series numbers scanners give, so viewers list it after the images.
SERIES_NUMBER = 9901
# Concepts of our own: no standard code means exactly these headings. A coding scheme
# designator starting with "99" is private by definition (PS3.16 section 8), and the
# SOP Common module's Coding Scheme Identification Sequence names it.
CODING_SCHEME = "99RELAYPACS"
CODES = {
    "title": ("CLININFO", TITLE),
    "note": ("NOTE", "Clinical note"),
    "level": ("LEVEL", "Service level"),
    "facility": ("FACILITY", "Sending facility"),
    "sender": ("SENDER", "Sent by"),
    "sent": ("SENT", "Time sent"),
}
# What is copied from the study's first instance: the patient and general study modules.
PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
# Written even when the first instance has no value (type 2: present, may be empty).
TYPE_2 = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
    }
)


class ClinicalObjectFailed(Exception):
    """The object could not be made. The message names the upload and the kind of error
    only: header values and work paths can name the patient."""


@dataclass(frozen=True)
class ClinicalInformation:
    """What the object tells the reader, in words."""

    clinical_notes: str
    service_level: str
    facility_name: str
    sender_name: str
    sent_at: datetime


def clinical_object_wanted(*, session: UploadSession) -> bool:
    """True when the upload has something to tell the reader (a clinical note, or a service
    level other than routine) and ``PACS_CLINICAL_NOTES_OBJECT`` is on."""
    if not settings.PACS_CLINICAL_NOTES_OBJECT:
        return False
    return bool(session.clinical_notes.strip()) or session.service_level != ServiceLevel.ROUTINE


def clinical_information_of(*, session: UploadSession) -> ClinicalInformation:
    owner = session.owner
    level = session.service_level
    words = ServiceLevel(level).label if level in ServiceLevel.values else level
    return ClinicalInformation(
        clinical_notes=session.clinical_notes.strip(),
        service_level=str(words),
        facility_name=session.facility.name if session.facility else "",
        sender_name=owner.full_name or owner.get_full_name() or owner.username,
        sent_at=session.received_at or session.created_at,
    )


def clinical_object_uids(
    *, upload_id: object, study_instance_uid: str, uid_root: str
) -> tuple[str, str]:
    """(Series Instance UID, SOP Instance UID) of the object: the same for the same upload
    and study, whoever makes it and however often."""
    series = generate_uid(
        prefix=uid_root,
        entropy_srcs=[str(upload_id), study_instance_uid, "clinical-information-series"],
    )
    instance = generate_uid(
        prefix=uid_root, entropy_srcs=[str(upload_id), study_instance_uid, "clinical-information"]
    )
    return str(series), str(instance)


def _code(key: str) -> Sequence:
    value, meaning = CODES[key]
    code = Dataset()
    code.CodeValue = value
    code.CodingSchemeDesignator = CODING_SCHEME
    code.CodeMeaning = meaning
    return Sequence([code])


def _item(key: str, value_type: str, value: str) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = value_type
    item.ConceptNameCodeSequence = _code(key)
    if value_type == "DATETIME":
        item.DateTime = value
    else:
        item.TextValue = value
    return item


def _text(header: Dataset, keyword: str) -> str:
    value = header.get(keyword)
    return "" if value is None else str(value).strip().replace("\x00", "")


def clinical_dataset(
    *,
    header: Dataset,
    info: ClinicalInformation,
    series_instance_uid: str,
    sop_instance_uid: str,
) -> FileDataset:
    """The Basic Text SR for the study whose first instance's ``header`` is given (read with
    the PATIENT_STUDY_KEYWORDS at least). Pure: no storage, no database, no clock."""
    sent = timezone.localtime(info.sent_at)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    copied = {keyword: _text(header, keyword) for keyword in PATIENT_STUDY_KEYWORDS}
    texts = [
        *copied.values(),
        info.clinical_notes,
        info.facility_name,
        info.sender_name,
    ]
    if any(not t.isascii() for t in texts):
        ds.SpecificCharacterSet = "ISO_IR 192"
    # SOP Common
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = sent.strftime("%Y%m%d")
    ds.InstanceCreationTime = sent.strftime("%H%M%S")
    scheme = Dataset()
    scheme.CodingSchemeDesignator = CODING_SCHEME
    scheme.CodingSchemeName = "RelayPACS local codes"
    scheme.CodingSchemeResponsibleOrganization = "RelayPACS"
    ds.CodingSchemeIdentificationSequence = Sequence([scheme])
    # Patient and General Study: those of the study it joins.
    if copied["PatientSex"] not in ("M", "F", "O"):
        copied["PatientSex"] = ""
    for keyword, value in copied.items():
        if value or keyword in TYPE_2:
            setattr(ds, keyword, value)
    # SR Document Series: a series of its own.
    ds.Modality = "SR"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = SERIES_DESCRIPTION
    ds.SeriesDate = sent.strftime("%Y%m%d")
    ds.SeriesTime = sent.strftime("%H%M%S")
    ds.ReferencedPerformedProcedureStepSequence = Sequence([])
    # General Equipment
    ds.Manufacturer = "RelayPACS"
    if info.facility_name:
        ds.InstitutionName = info.facility_name[:64]  # LO; the full name is in the content
    # SR Document General: information for the reader, not a report.
    ds.InstanceNumber = 1
    ds.CompletionFlag = "PARTIAL"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ContentDate = sent.strftime("%Y%m%d")
    ds.ContentTime = sent.strftime("%H%M%S")
    ds.PerformedProcedureCodeSequence = Sequence([])
    # SR Document Content
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = _code("title")
    ds.ContinuityOfContent = "SEPARATE"
    items = []
    if info.clinical_notes:
        items.append(_item("note", "TEXT", info.clinical_notes))
    items.append(_item("level", "TEXT", info.service_level))
    if info.facility_name:
        items.append(_item("facility", "TEXT", info.facility_name))
    if info.sender_name:
        items.append(_item("sender", "TEXT", info.sender_name))
    items.append(_item("sent", "DATETIME", sent.strftime("%Y%m%d%H%M%S%z")))
    ds.ContentSequence = Sequence(items)
    return ds


def clinical_objects_make(
    *,
    session: UploadSession,
    instances: Iterable[UploadFile],
    open_instance: Callable[[UploadFile], BinaryIO],
    first_position: int,
) -> list[UploadFile]:
    """Write one clinical-information object per study of ``instances`` (the checked files
    of the upload) into the upload's work folder, and return their UploadFile rows,
    unsaved: kind DICOM, ``added_by_relay``, no parent, positions from ``first_position``.

    Returns [] when ``clinical_object_wanted`` says no. Each study's header is read from its
    first DICOM instance through ``open_instance``. Idempotent: the same upload gives the
    same files and rows. Raises ClinicalObjectFailed (naming no value) when a header
    cannot be read back or the object cannot be written.
    """
    if not clinical_object_wanted(session=session):
        return []
    first: dict[str, UploadFile] = {}
    for f in instances:
        if f.kind == FileKind.DICOM and f.study_instance_uid and not f.added_by_relay:
            first.setdefault(f.study_instance_uid, f)
    if not first:
        return []
    info = clinical_information_of(session=session)
    work = storage.work_dir(upload_id=session.id)
    rows = []
    try:
        for number, (study_uid, instance) in enumerate(first.items(), start=1):
            with open_instance(instance) as stream:
                header = dcmread(
                    stream, stop_before_pixels=True, specific_tags=list(PATIENT_STUDY_KEYWORDS)
                )
            series_uid, sop_uid = clinical_object_uids(
                upload_id=session.id,
                study_instance_uid=study_uid,
                uid_root=settings.DICOM_UID_ROOT,
            )
            dataset = clinical_dataset(
                header=header, info=info, series_instance_uid=series_uid, sop_instance_uid=sop_uid
            )
            dataset.StudyInstanceUID = study_uid  # exactly the study's, as recorded
            relpath = f"clinical-information-{number}.dcm"
            dataset.save_as(work / relpath, enforce_file_format=True)
            rows.append(
                UploadFile(
                    session=session,
                    parent=None,
                    position=first_position + number - 1,
                    name=FILE_NAME,
                    size=(work / relpath).stat().st_size,
                    offset=0,
                    path=relpath,
                    kind=FileKind.DICOM,
                    reason=FILE_REASON,
                    sop_class_uid=BasicTextSRStorage,
                    sop_instance_uid=sop_uid,
                    study_instance_uid=study_uid,
                    series_instance_uid=series_uid,
                    added_by_relay=True,
                )
            )
    except Exception as exc:  # pydicom and the file system raise many kinds
        raise ClinicalObjectFailed(
            f"upload {session.id}: the clinical information object could not be made "
            f"({type(exc).__name__})"
        ) from None
    return rows
