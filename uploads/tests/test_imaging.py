"""Photos to DICOM Secondary Capture: every variant passes dciodvfy without errors."""

import io
import random
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
    # External-camera photography, what the app says for photos too (not OT, "other").
    assert ds.Modality == "XC"
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


def damaged(data: bytes, how: str) -> bytes:
    """``data`` cut in half, or with 2,000 bytes of its compressed image data overwritten
    with noise (the headers stay intact, so the photo opens and fails while decoding)."""
    if how == "truncated":
        return data[: len(data) // 2]
    middle = len(data) // 2
    return data[:middle] + random.Random(0).randbytes(2000) + data[middle + 2000 :]


def noisy_photo(fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    pixels = random.Random(5).randbytes(640 * 480 * 3)  # the same photo on every run
    Image.frombytes("RGB", (640, 480), pixels).save(buffer, fmt, **save)
    return buffer.getvalue()


DAMAGED = {
    "truncated upright JPEG": damaged(noisy_photo("JPEG", quality=90), "truncated"),
    "upright JPEG corrupt in the middle": damaged(noisy_photo("JPEG", quality=90), "corrupt"),
    "truncated EXIF-rotated JPEG": damaged(
        encoded("RGB", "JPEG", size=(640, 480), exif_orientation=6), "truncated"
    ),
    "truncated progressive JPEG": damaged(noisy_photo("JPEG", progressive=True), "truncated"),
    "truncated PNG": damaged(noisy_photo("PNG"), "truncated"),
}


@pytest.mark.parametrize("case", DAMAGED)
def test_a_damaged_photo_is_refused_with_a_sentence_not_a_decoder_error(case, tmp_path):
    from uploads.imaging import ImageConversionError

    data = DAMAGED[case]
    series = SeriesContext(
        uid_root="1.2.3.", study_instance_uid="1.2.3.4", series_instance_uid="1.2.3.5"
    )
    with pytest.raises(ImageConversionError) as caught:
        convert_image(
            stream=io.BytesIO(data),
            kind=image_kind(data),
            dest=tmp_path / "x.dcm",
            patient=PATIENT,
            series=series,
            number=1,
        )
    assert "damaged and could not be read" in caught.value.reason
    assert "Error" not in caught.value.reason  # no exception class names for the technician
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert not (tmp_path / "x.dcm").exists()


@pytest.mark.parametrize("case", ["truncated upright JPEG", "truncated PNG"])
def test_a_damaged_photo_is_refused_even_after_a_library_turned_on_truncated_decoding(
    case, tmp_path
):
    """WeasyPrint (the reports app's PDFs, in the same worker process) turns on Pillow's
    global LOAD_TRUNCATED_IMAGES when imported; half a photo must still be refused."""
    import weasyprint  # noqa: F401
    from PIL import ImageFile

    from uploads.imaging import ImageConversionError

    ImageFile.LOAD_TRUNCATED_IMAGES = True  # what importing WeasyPrint does
    series = SeriesContext(
        uid_root="1.2.3.", study_instance_uid="1.2.3.4", series_instance_uid="1.2.3.5"
    )
    try:
        with pytest.raises(ImageConversionError):
            convert_image(
                stream=io.BytesIO(DAMAGED[case]),
                kind=image_kind(DAMAGED[case]),
                dest=tmp_path / "x.dcm",
                patient=PATIENT,
                series=series,
                number=1,
            )
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
