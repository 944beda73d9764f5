"""Photos to DICOM Secondary Capture: every variant passes dciodvfy without errors."""

import io
import subprocess

import pydicom
import pytest
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from uploads.imaging import PatientContext, SeriesContext, convert_image, image_kind

PATIENT = PatientContext(
    patient_name="Doe^Jané",
    patient_id="P1",
    patient_sex="F",
    patient_birth_date="19800101",
    issuer_of_patient_id="CLINIC1",
    study_date="20261125",
    study_description="Wound",
)


def encoded(mode: str, fmt: str, size=(64, 48), exif_orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.new(mode, size, 100 if mode in ("L", "I;16") else (200, 10, 10, 128)[: len(mode)])
    kwargs = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


CASES = {
    "upright RGB JPEG": (encoded("RGB", "JPEG"), JPEGBaseline8Bit, (48, 64)),
    "EXIF-rotated JPEG": (encoded("RGB", "JPEG", exif_orientation=6), JPEGBaseline8Bit, (64, 48)),
    "grey JPEG": (encoded("L", "JPEG"), JPEGBaseline8Bit, (48, 64)),
    "RGBA PNG": (encoded("RGBA", "PNG"), ExplicitVRLittleEndian, (48, 64)),
    "grey PNG": (encoded("L", "PNG"), ExplicitVRLittleEndian, (48, 64)),
    "16-bit PNG": (encoded("I;16", "PNG"), ExplicitVRLittleEndian, (48, 64)),
}


@pytest.mark.parametrize("case", CASES)
def test_every_photo_kind_converts_to_a_valid_object(case, tmp_path):
    data, syntax, (rows, columns) = CASES[case]
    dest = tmp_path / "out.dcm"
    series = SeriesContext(
        uid_root="1.2.826.0.1.3680043.8.498.",
        study_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
    )
    convert_image(
        stream=io.BytesIO(data),
        kind=image_kind(data),
        dest=dest,
        patient=PATIENT,
        series=series,
        number=1,
    )
    out = subprocess.run(["dciodvfy", str(dest)], capture_output=True, text=True, check=False)
    assert [
        line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")
    ] == []
    ds = pydicom.dcmread(dest)
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert (ds.Rows, ds.Columns) == (rows, columns)
    assert str(ds.PatientName) == "Doe^Jané" and ds.IssuerOfPatientID == "CLINIC1"
    if case == "upright RGB JPEG":
        assert data in dest.read_bytes()  # original bytes kept, not re-encoded


def test_a_broken_image_gives_a_reason(tmp_path):
    from uploads.imaging import ImageConversionError

    series = SeriesContext(
        uid_root="1.2.3.", study_instance_uid="1.2.3.4", series_instance_uid="1.2.3.5"
    )
    with pytest.raises(ImageConversionError) as caught:
        convert_image(
            stream=io.BytesIO(b"\x89PNG\r\n\x1a\n" + b"\0" * 40),
            kind="png",
            dest=tmp_path / "x.dcm",
            patient=PATIENT,
            series=series,
            number=1,
        )
    assert "could not be read" in caught.value.reason
