"""Photos (JPEG, PNG) to DICOM Secondary Capture, one series per upload.

An upright baseline JPEG keeps its original bytes, encapsulated (JPEG Baseline transfer
syntax); a JPEG rotated by EXIF, or any other JPEG, is re-encoded upright; a PNG becomes
uncompressed pixels (alpha dropped). Every object passes dciodvfy (tested).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from django.utils import timezone
from PIL import Image, ImageOps, JpegImagePlugin
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Quality of a re-encoded JPEG: visually lossless for photos of films and wounds.
REENCODE_QUALITY = 95
# Decoding a photo needs its pixels in memory; refuse absurd sizes (a decompression bomb).
MAX_PIXELS = 100_000_000


class ImageConversionError(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PatientContext:
    """What the technician confirmed for the photos; dates as YYYYMMDD."""

    patient_name: str = ""
    patient_id: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    issuer_of_patient_id: str = ""
    study_date: str = ""
    study_description: str = ""
    accession_number: str = ""


@dataclass(frozen=True)
class SeriesContext:
    uid_root: str
    study_instance_uid: str
    series_instance_uid: str
    study_id: str = "1"
    institution: str = ""


def image_kind(head: bytes) -> str | None:
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head.startswith(PNG_MAGIC):
        return "png"
    return None


def _base_dataset(
    path: Path,
    *,
    patient: PatientContext,
    series: SeriesContext,
    number: int,
    transfer_syntax: str,
    now: datetime,
    sop_uid: str,
) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    texts = [patient.patient_name, patient.study_description, series.institution]
    if any(not t.isascii() for t in texts):
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    # Patient
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    if patient.issuer_of_patient_id:
        ds.IssuerOfPatientID = patient.issuer_of_patient_id
    ds.PatientBirthDate = patient.patient_birth_date
    ds.PatientSex = patient.patient_sex if patient.patient_sex in ("M", "F", "O") else ""
    # General Study
    ds.StudyInstanceUID = series.study_instance_uid
    ds.StudyDate = patient.study_date or now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = series.study_id
    ds.AccessionNumber = patient.accession_number
    if patient.study_description:
        ds.StudyDescription = patient.study_description
    # General Series
    ds.Modality = "OT"
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.SeriesNumber = 1
    # Type 2C that dciodvfy cannot evaluate: absent is an error there, empty only a warning
    # ("unknown"), which is the truth for a photo.
    ds.Laterality = ""
    ds.SeriesDescription = "Photos"
    # General Equipment and SC Equipment
    ds.Manufacturer = "RelayPACS"
    if series.institution:
        ds.InstitutionName = series.institution
    ds.ConversionType = "DI"
    # General Image and SC Image
    ds.InstanceNumber = number
    ds.PatientOrientation = ""
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.DateOfSecondaryCapture = now.strftime("%Y%m%d")
    ds.TimeOfSecondaryCapture = now.strftime("%H%M%S")
    ds.BurnedInAnnotation = "NO"
    return ds


@dataclass(frozen=True)
class _Pixels:
    transfer_syntax: str
    photometric: str
    samples: int
    width: int
    height: int
    data: bytes
    bits: int = 8


def _jpeg_pixels(stream: BinaryIO, image: Image.Image) -> _Pixels:
    """An upright baseline JPEG keeps its bytes; anything else is re-encoded upright."""
    orientation = image.getexif().get(0x0112, 1)
    keep = (
        orientation in (0, 1)
        and image.mode in ("RGB", "L")
        and not image.info.get("progressive")
        and not image.info.get("progression")
    )
    if keep:
        stream.seek(0)
        subsampled = image.mode == "RGB" and JpegImagePlugin.get_sampling(image) != 0
        photometric = "YBR_FULL_422" if subsampled else "YBR_FULL"
        return _Pixels(
            transfer_syntax=JPEGBaseline8Bit,
            photometric="MONOCHROME2" if image.mode == "L" else photometric,
            samples=1 if image.mode == "L" else 3,
            width=image.width,
            height=image.height,
            data=stream.read(),
        )
    upright = ImageOps.exif_transpose(image).convert("L" if image.mode in ("L", "I;16") else "RGB")
    buffer = io.BytesIO()
    upright.save(buffer, format="JPEG", quality=REENCODE_QUALITY, subsampling="4:2:0")
    return _Pixels(
        transfer_syntax=JPEGBaseline8Bit,
        photometric="MONOCHROME2" if upright.mode == "L" else "YBR_FULL_422",
        samples=1 if upright.mode == "L" else 3,
        width=upright.width,
        height=upright.height,
        data=buffer.getvalue(),
    )


def _png_pixels(image: Image.Image) -> _Pixels:
    """Uncompressed pixels: 16-bit grey kept at 16 bits, alpha and palettes dropped."""
    if image.mode in ("I;16", "I;16B", "I"):
        grey16 = image.convert("I;16")
        return _Pixels(
            transfer_syntax=ExplicitVRLittleEndian,
            photometric="MONOCHROME2",
            samples=1,
            width=grey16.width,
            height=grey16.height,
            data=grey16.tobytes("raw", "I;16"),
            bits=16,
        )
    grey = image.mode in ("L", "LA", "1")
    converted = image.convert("L" if grey else "RGB")
    return _Pixels(
        transfer_syntax=ExplicitVRLittleEndian,
        photometric="MONOCHROME2" if grey else "RGB",
        samples=1 if grey else 3,
        width=converted.width,
        height=converted.height,
        data=converted.tobytes(),
    )


def _pixel_module(ds: FileDataset, pixels: _Pixels) -> None:
    ds.SamplesPerPixel = pixels.samples
    ds.PhotometricInterpretation = pixels.photometric
    if pixels.samples > 1:
        ds.PlanarConfiguration = 0
    ds.Rows = pixels.height
    ds.Columns = pixels.width
    ds.BitsAllocated = pixels.bits
    ds.BitsStored = pixels.bits
    ds.HighBit = pixels.bits - 1
    ds.PixelRepresentation = 0


def convert_image(
    *,
    stream: BinaryIO,
    kind: str,
    dest: Path,
    patient: PatientContext,
    series: SeriesContext,
    number: int,
    sop_instance_uid: str = "",
) -> str:
    """Write one Secondary Capture object for the photo to ``dest``; returns its SOP UID.

    Raises ImageConversionError with a reason a technician understands.
    """
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    sop_instance_uid = sop_instance_uid or generate_uid(prefix=series.uid_root)
    now = timezone.localtime()
    try:
        stream.seek(0)
        image = Image.open(stream)
        if kind == "png":
            image.load()
    except (OSError, Image.DecompressionBombError, ValueError) as exc:
        raise ImageConversionError(
            f"the {kind.upper()} image could not be read ({type(exc).__name__})"
        ) from exc

    pixels = _jpeg_pixels(stream, image) if kind == "jpeg" else _png_pixels(image)
    ds = _base_dataset(
        dest,
        patient=patient,
        series=series,
        number=number,
        sop_uid=sop_instance_uid,
        transfer_syntax=pixels.transfer_syntax,
        now=now,
    )
    _pixel_module(ds, pixels)
    if pixels.transfer_syntax == JPEGBaseline8Bit:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        ds.PixelData = encapsulate([pixels.data])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.data
        ds["PixelData"].VR = "OB" if pixels.bits == 8 else "OW"
    ds.save_as(dest, enforce_file_format=True)
    return str(ds.SOPInstanceUID)
