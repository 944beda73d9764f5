"""Photos (JPEG, PNG) to DICOM Secondary Capture, one series per upload.

An upright baseline JPEG keeps its original bytes, encapsulated (JPEG Baseline transfer
syntax), once a full decode showed they are sound; a JPEG rotated by EXIF, or any other
JPEG, is re-encoded upright; a PNG becomes uncompressed pixels (alpha dropped). Every
object passes dciodvfy (tested). A damaged photo (cut short, corrupt data) raises
ImageConversionError with a reason for the technician, never a decoder's exception.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from django.utils import timezone
from PIL import Image, ImageFile, ImageOps, JpegImagePlugin
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
    """The photo cannot become DICOM; ``reason`` says why, in words for the technician."""

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
    # XC: external-camera photography (the DICOM modality for a photo), as the app says.
    ds.Modality = "XC"
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


def _verify_jpeg(stream: BinaryIO) -> None:
    """Decode the whole JPEG once, so bytes that are kept as they are were checked.

    Decoded at one eighth of its size (JPEG's DCT scaling): every byte of the compressed
    data is still read and decoded, with 1/64 of the memory. Raises what Pillow raises
    for a damaged file (an OSError for data cut short or corrupt).
    """
    stream.seek(0)
    with Image.open(stream) as probe:
        probe.draft(probe.mode, (max(1, probe.width // 8), max(1, probe.height // 8)))
        probe.load()


def _jpeg_pixels(stream: BinaryIO, image: Image.Image) -> _Pixels:
    """An upright baseline JPEG keeps its bytes (once decoded to verify them); anything
    else is re-encoded upright."""
    orientation = image.getexif().get(0x0112, 1)
    keep = (
        orientation in (0, 1)
        and image.mode in ("RGB", "L")
        and not image.info.get("progressive")
        and not image.info.get("progression")
    )
    if keep:
        _verify_jpeg(stream)
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

    Raises ImageConversionError with a reason a technician understands, for a damaged
    photo (truncated, corrupt: found while decoding it) or one too large to convert. The
    decoder's own exception is not chained: its message may name the file.
    """
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    # A damaged photo must fail to decode. Pillow's global switch to decode what it can of
    # a truncated file is turned on by libraries that share the worker process (WeasyPrint
    # sets it when the reports app renders a PDF): with it on, half a JPEG passed as whole.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    sop_instance_uid = sop_instance_uid or generate_uid(prefix=series.uid_root)
    now = timezone.localtime()
    label = kind.upper()
    try:
        stream.seek(0)
        image = Image.open(stream)
        if kind == "png":
            image.load()
        pixels = _jpeg_pixels(stream, image) if kind == "jpeg" else _png_pixels(image)
    except Image.DecompressionBombError:
        raise ImageConversionError(
            f"the {label} photo has more than {MAX_PIXELS // 1_000_000} million pixels, more "
            "than RelayPACS converts; send a smaller copy of it"
        ) from None
    except Exception:  # Pillow raises many kinds on damaged bytes (OSError, SyntaxError, ...)
        raise ImageConversionError(
            f"the {label} photo is damaged and could not be read (it is cut short or its "
            "data is corrupt); copy it again from the camera or phone it was taken with"
        ) from None
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
