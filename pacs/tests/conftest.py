"""Helpers for the pacs tests: turn files and bytes into InstanceSource objects."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pacs.services import InstanceSource


def source_from_path(
    path: Path, *, sop_instance_uid: str, study_instance_uid: str
) -> InstanceSource:
    return InstanceSource(
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=study_instance_uid,
        size=path.stat().st_size,
        open=lambda: path.open("rb"),
    )


def source_from_bytes(
    data: bytes, *, sop_instance_uid: str, study_instance_uid: str = "1.2.826.0.1.3680043.10.1"
) -> InstanceSource:
    return InstanceSource(
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=study_instance_uid,
        size=len(data),
        open=lambda: io.BytesIO(data),
    )


@pytest.fixture
def to_source() -> Callable[[Any], InstanceSource]:
    """``to_source(dicom_file)``: an InstanceSource reading a conftest DicomFile from disk."""

    def convert(dicom_file: Any) -> InstanceSource:
        return source_from_path(
            dicom_file.path,
            sop_instance_uid=dicom_file.sop_instance_uid,
            study_instance_uid=dicom_file.study_instance_uid,
        )

    return convert
