"""Fixtures for the pacs tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pacs.services import InstanceSource
from pacs.tests.helpers import source_from_path


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
