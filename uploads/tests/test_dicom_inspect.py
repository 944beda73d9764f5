import io
import time

import pytest

from uploads.dicom import inspect_instance, wrap_without_meta
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


@pytest.mark.parametrize("name", ["ExplVR_LitEndNoMeta.dcm", "ExplVR_BigEndNoMeta.dcm"])
def test_a_dataset_without_file_header_is_wrapped(name, tmp_path):
    data = (PYDICOM_DATA / "test_files" / name).read_bytes()
    dest = tmp_path / "wrapped.dcm"
    assert wrap_without_meta(stream=io.BytesIO(data), size=len(data), dest=str(dest))
    assert inspect(dest.read_bytes()).kind == "dicom"


def test_zeros_are_not_parsed_as_a_dataset_without_file_header(tmp_path):
    # Forced parsing took seconds per few MiB of zeros (one empty element per 8 bytes).
    data = b"\0" * 64 * 1024**2
    started = time.monotonic()
    assert not wrap_without_meta(stream=io.BytesIO(data), size=len(data), dest=str(tmp_path / "x"))
    assert time.monotonic() - started < 1
