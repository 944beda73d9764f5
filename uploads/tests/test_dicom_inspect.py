import io

import pytest

from uploads.dicom import inspect_instance
from uploads.tests.helpers import PYDICOM_DATA, sample_paths


def inspect(data: bytes):
    return inspect_instance(stream=io.BytesIO(data), size=len(data), name="x")


@pytest.mark.parametrize("path", sample_paths(), ids=lambda p: p.name)
def test_valid_sample_files_are_dicom(path):
    result = inspect(path.read_bytes())
    assert result.kind == "dicom", result.reason
    assert result.info.sop_instance_uid and result.info.study_instance_uid


@pytest.mark.parametrize("cut", [1, 2, 100, 5000])
def test_it_detects_truncation_by_declared_lengths(cut):
    data = (PYDICOM_DATA / "test_files/CT_small.dcm").read_bytes()[:-cut]
    result = inspect(data)
    assert result.kind == "rejected"
    assert "truncated" in result.reason


def test_trailing_garbage_is_rejected():
    data = (PYDICOM_DATA / "test_files/CT_small.dcm").read_bytes() + b"\x01\x02\x03"
    assert inspect(data).kind == "rejected"


def test_truncated_encapsulated_pixel_data_is_rejected():
    data = (PYDICOM_DATA / "test_files/SC_rgb_jpeg_dcmtk.dcm").read_bytes()[:-50]
    assert inspect(data).kind == "rejected"


def test_pydicom_truncated_fixtures_are_rejected():
    for name in ("MR_truncated.dcm", "rtplan_truncated.dcm"):
        assert inspect((PYDICOM_DATA / "test_files" / name).read_bytes()).kind == "rejected", name


def test_dicomdir_and_non_dicom_files_are_skipped():
    assert (
        inspect((PYDICOM_DATA / "test_files/dicomdirtests/DICOMDIR").read_bytes()).kind == "skipped"
    )
    assert inspect(b"hello" * 100).kind == "skipped"
    assert inspect(b"%PDF-1.4" + b"\0" * 200).kind == "skipped"


def test_file_meta_that_names_another_instance_is_rejected():
    result = inspect((PYDICOM_DATA / "test_files/rtplan.dcm").read_bytes())
    assert result.kind == "rejected"
    assert "file meta" in result.reason


def test_missing_uids_are_rejected():
    result = inspect((PYDICOM_DATA / "test_files/JPEGLSNearLossless_08.dcm").read_bytes())
    assert result.kind == "rejected"
    assert "Study Instance UID" in result.reason


def test_non_ascii_names_come_out_as_unicode():
    result = inspect((PYDICOM_DATA / "charset_files/chrRuss.dcm").read_bytes())
    assert result.info.patient_name == "Люкceмбypг"
