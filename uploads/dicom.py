"""Checking one file of an upload as DICOM, without loading pixel data.

Pure functions on a seekable stream; no database, no storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import FileDataset
from pydicom.errors import InvalidDicomError

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
UNDEFINED_LENGTH = 0xFFFFFFFF
DEFLATED = "1.2.840.10008.1.2.1.99"
# Values larger than this are skipped by seeking, not read: pixel data never enters memory.
DEFER_SIZE = 4096


@dataclass(frozen=True)
class DicomInfo:
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str = ""
    patient_name: str = ""
    patient_id: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_description: str = ""
    accession_number: str = ""
    series_description: str = ""
    series_number: int | None = None
    instance_number: int | None = None


@dataclass(frozen=True)
class Inspection:
    """``kind`` is "dicom" (with ``info``), "skipped" or "rejected" (with ``reason``)."""

    kind: str
    reason: str = ""
    info: DicomInfo | None = None
    warnings: list[str] = field(default_factory=list)


def _text(ds: FileDataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed value must not sink the whole file's metadata
        return ""
    if value is None:
        return ""
    return str(value).strip().replace("\x00", "")


def _int(ds: FileDataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
    except Exception:
        return None


def _end_of_dataset(ds: FileDataset, stream: BinaryIO) -> int:
    """Where the last top-level element ends, from its declared length (no reading)."""
    last = None
    for tag in ds._dict:  # noqa: SLF001 - raw elements keep value_tell and length
        last = ds._dict[tag]  # noqa: SLF001
    if isinstance(last, RawDataElement) and last.length != UNDEFINED_LENGTH and last.value_tell:
        return int(last.value_tell) + int(last.length)
    return stream.tell()


def inspect_instance(*, stream: BinaryIO, size: int, name: str) -> Inspection:
    """Classify one file of the manifest.

    Skipped: not a DICOM Part 10 file (no ``DICM`` prefix), or a DICOMDIR.
    Rejected: a DICOM file that is truncated, inconsistent or missing required UIDs.
    Never raises for bad input; never reads pixel data into memory.
    """
    if size < 132:
        return Inspection("skipped", "not a DICOM file (too small to hold a DICOM header)")
    stream.seek(128)
    if stream.read(4) != b"DICM":
        return Inspection("skipped", "not a DICOM file (no DICM header)")
    stream.seek(0)
    try:
        ds = dcmread(stream, defer_size=DEFER_SIZE, force=False)
    except InvalidDicomError:
        return Inspection("rejected", "the DICOM header could not be read")
    except EOFError:
        return Inspection("rejected", "the file is truncated: it ends in the middle of a value")
    except Exception as exc:  # pydicom raises many kinds on hostile bytes
        return Inspection("rejected", f"the file is not valid DICOM ({type(exc).__name__})")

    meta = ds.file_meta
    media_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
    if media_class == DICOMDIR_SOP_CLASS:
        return Inspection("skipped", "DICOMDIR (a CD index, not an image)")
    transfer_syntax = str(meta.get("TransferSyntaxUID", "") or "")
    # A deflated dataset is read through zlib, whose own checks catch truncation; its
    # element positions are not file offsets.
    end = size if transfer_syntax == DEFLATED else _end_of_dataset(ds, stream)
    if end != size:
        if end > size:
            return Inspection(
                "rejected", f"the file is truncated: {end - size} bytes are missing at its end"
            )
        return Inspection(
            "rejected", f"the file has {size - end} unreadable bytes after its last element"
        )

    info = DicomInfo(
        sop_class_uid=_text(ds, "SOPClassUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        transfer_syntax_uid=transfer_syntax,
        modality=_text(ds, "Modality"),
        patient_name=_text(ds, "PatientName"),
        patient_id=_text(ds, "PatientID"),
        patient_birth_date=_text(ds, "PatientBirthDate")[:8],
        patient_sex=_text(ds, "PatientSex"),
        study_date=_text(ds, "StudyDate")[:8],
        study_description=_text(ds, "StudyDescription"),
        accession_number=_text(ds, "AccessionNumber"),
        series_description=_text(ds, "SeriesDescription"),
        series_number=_int(ds, "SeriesNumber"),
        instance_number=_int(ds, "InstanceNumber"),
    )
    missing = [
        label
        for label, value in (
            ("SOP Class UID", info.sop_class_uid),
            ("SOP Instance UID", info.sop_instance_uid),
            ("Study Instance UID", info.study_instance_uid),
            ("Series Instance UID", info.series_instance_uid),
            ("Transfer Syntax UID", info.transfer_syntax_uid),
        )
        if not value
    ]
    if missing:
        return Inspection(
            "rejected", "required DICOM identifiers are missing: " + ", ".join(missing)
        )
    if str(meta.get("MediaStorageSOPInstanceUID", "")) != info.sop_instance_uid:
        return Inspection(
            "rejected",
            "the file meta header names a different SOP Instance UID than the dataset",
        )
    if media_class and media_class != info.sop_class_uid:
        return Inspection(
            "rejected", "the file meta header names a different SOP Class UID than the dataset"
        )
    return Inspection("dicom", info=info)


def sniff_reason(head: bytes) -> str:
    """Why a file that is not DICOM was skipped, in words (from its first bytes)."""
    if head.startswith(b"%PDF"):
        return "a PDF document, not a DICOM image"
    if head.startswith((b"\xd0\xcf\x11\xe0", b"PK\x03\x04")):
        return "an office document or other archive, not a DICOM image"
    if head[:64].isascii() and b"\x00" not in head[:64]:
        return "a text file, not a DICOM image"
    return "not a DICOM file"


def wrap_without_meta(*, stream: BinaryIO, size: int, dest: str) -> bool:
    """Give a DICOM dataset that lacks the Part 10 header (preamble, ``DICM``, file meta) a
    correct one, written to ``dest`` followed by the original bytes unchanged.

    Returns False when the bytes are not a readable dataset with SOP, study and series
    UIDs (then it is not DICOM at all). Copies as a stream; never loads pixel data.
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        UID,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    )

    stream.seek(0)
    first_group = stream.read(2)
    # A dataset with the SOP UIDs this needs starts in group 0002 (a file meta group
    # without its preamble) or 0008, in either byte order. Anything else is not parsed:
    # forced parsing reads, say, 6 MiB of zeros as 800,000 empty elements for seconds.
    if first_group not in (b"\x02\x00", b"\x00\x02", b"\x08\x00", b"\x00\x08"):
        return False
    stream.seek(0)
    try:
        ds = dcmread(stream, force=True, defer_size=DEFER_SIZE)
        sop_class = _text(ds, "SOPClassUID")
        sop_instance = _text(ds, "SOPInstanceUID")
        complete = all(_text(ds, k) for k in ("StudyInstanceUID", "SeriesInstanceUID"))
        implicit, little = ds.original_encoding
    except Exception:
        return False
    if not (sop_class and sop_instance and complete):
        return False
    if implicit:
        syntax = ImplicitVRLittleEndian
    else:
        syntax = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    stream.seek(0)
    with open(dest, "xb") as out:
        out.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(out, meta, enforce_standard=True)  # type: ignore[arg-type]
        remaining = size
        while remaining > 0:
            block = stream.read(min(1024 * 1024, remaining))
            if not block:
                break
            out.write(block)
            remaining -= len(block)
    return True
