"""Synthetic DICOM studies (random pixels, valid UIDs) for tests and benchmarks."""

from __future__ import annotations

import os
from pathlib import Path

from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ROOT = "1.2.826.0.1.3680043.10.1453."  # test UIDs only; never a real patient's


def write_instance(
    path: Path,
    *,
    study_uid: str,
    series_uid: str,
    number: int,
    pixel_bytes: int,
    patient_name: str = "SYNTHETIC^PATIENT",
) -> str:
    """Write one CT instance with about ``pixel_bytes`` of random 16-bit pixels; returns its SOP UID."""
    side = max(8, int((pixel_bytes / 2) ** 0.5))
    sop_uid = generate_uid(prefix=ROOT)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = patient_name
    ds.PatientID = "SYN0001"
    ds.StudyDate = "20261125"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.Rows = side
    ds.Columns = side
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = os.urandom(side * side * 2)
    ds.save_as(path, enforce_file_format=True)
    return str(sop_uid)


def write_study(directory: Path, *, instances: int, instance_bytes: int) -> list[Path]:
    """A one-series CT study of ``instances`` files of about ``instance_bytes`` each."""
    directory.mkdir(parents=True, exist_ok=True)
    study_uid = generate_uid(prefix=ROOT)
    series_uid = generate_uid(prefix=ROOT)
    paths = []
    for number in range(1, instances + 1):
        path = directory / f"IM{number:05d}.dcm"
        write_instance(
            path,
            study_uid=study_uid,
            series_uid=series_uid,
            number=number,
            pixel_bytes=instance_bytes,
        )
        paths.append(path)
    return paths
