"""Every input a clinic has, end to end to the real Orthanc: folders, ZIP, RAR, photos,
header-less DICOM, and the hostile cases."""

from __future__ import annotations

import io
import os
import random
import subprocess
import zipfile
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from PIL import Image

from uploads.models import FileKind, PacsStatus, UploadFile
from uploads.tests.helpers import PYDICOM_DATA, content_md5, rar_fixture, sample_paths, sop_uid
from uploads.tests.rar5 import rar5_stored
from uploads.tests.synthetic import write_study
from uploads.tests.test_pipeline_e2e import FINAL, send_upload, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def make_zip(
    path: Path, entries: list[tuple[str, bytes]], compression=zipfile.ZIP_DEFLATED
) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return path


def dciodvfy_errors(data: bytes, tmp_path: Path) -> list[str]:
    path = tmp_path / "check.dcm"
    path.write_bytes(data)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_zip_of_a_cd_with_dicomdir_nested_zip_and_junk_reaches_the_pacs(
    api, celery_worker, orthanc_clean, tmp_path
):
    ct, mr, us = sample_paths(
        [
            "test_files/CT_small.dcm",
            "test_files/examples_overlay.dcm",
            "test_files/ExplVR_BigEnd.dcm",
        ]
    )
    inner = make_zip(tmp_path / "inner.zip", [("more/US0001", us.read_bytes())])
    archive = make_zip(
        tmp_path / "cd.zip",
        [
            ("DICOMDIR", (PYDICOM_DATA / "test_files/dicomdirtests/DICOMDIR").read_bytes()),
            ("DICOM/ST1/CT0001", ct.read_bytes()),
            ("DICOM/ST1/Bilder Röntgen/MR0001", mr.read_bytes()),
            ("Thumbs.db", b"\0junk" * 50),
            ("nested/inner.zip", inner.read_bytes()),
        ],
    )
    upload = send_upload(api, [archive])
    status = wait_for(api, upload["upload_id"], FINAL)
    assert status["state"] == "completed", status
    for path in (ct, mr, us):
        assert orthanc_clean.instance_file(sop_uid(path)) == path.read_bytes()
    skipped = {f["name"]: f["reason"] for f in status["skipped_files"]}
    assert "DICOMDIR" in skipped["cd.zip/DICOMDIR"]
    assert "cd.zip/Thumbs.db" in skipped


@pytest.mark.parametrize(
    ("fixture", "code"),
    [
        ("rar5-evil-symlink-traversal.rar", "unsafe_archive"),
        ("rar5-psw.rar", "archive_encrypted"),
        ("rar3-solid.rar", "archive_unsupported"),
        ("rar5-subdirs.rar", "no_dicom_files"),  # unpacked: only text files inside
    ],
)
def test_rar_fixtures_fail_cleanly_with_their_own_code(
    api, celery_worker, orthanc_clean, fixture, code
):
    upload = send_upload(api, [rar_fixture(fixture)])
    status = wait_for(api, upload["upload_id"], FINAL)
    assert status["state"] == "failed"
    assert status["error"]["code"] == code
    assert status["error"]["message"] and status["error"]["hint"]


def test_rar_symlinks_are_listed_as_skipped(api, celery_worker, orthanc_clean):
    upload = send_upload(api, [rar_fixture("rar5-symlink-unix.rar")])
    status = wait_for(api, upload["upload_id"], FINAL)
    skipped = {f["name"]: f["reason"] for f in status["skipped_files"]}
    assert "link" in skipped["rar5-symlink-unix.rar/data_link"]
    assert "link" in skipped["rar5-symlink-unix.rar/random_link"]


def test_zip_bomb_fails_saying_which_limit(api, celery_worker, orthanc_clean, tmp_path):
    bomb = make_zip(tmp_path / "bomb.zip", [("zeros.dcm", b"\0" * 60_000_000)])
    upload = send_upload(api, [bomb])
    status = wait_for(api, upload["upload_id"], FINAL)
    assert status["state"] == "failed"
    assert status["error"]["code"] == "archive_ratio_exceeded"
    assert "zip bomb" in status["error"]["message"]


def test_password_protected_zip_is_refused(api, celery_worker, orthanc_clean, tmp_path):
    data = bytearray(make_zip(tmp_path / "p.zip", [("a.dcm", b"secret")]).read_bytes())
    data[6] |= 0x1
    data[data.rfind(b"PK\x01\x02") + 8] |= 0x1
    (tmp_path / "p.zip").write_bytes(bytes(data))
    status = wait_for(api, send_upload(api, [tmp_path / "p.zip"])["upload_id"], FINAL)
    assert status["error"]["code"] == "archive_encrypted"


def photo_bytes(kind: str, exif_orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    if kind == "png":
        Image.new("RGBA", (120, 80), (10, 200, 30, 128)).save(buffer, "PNG")
    else:
        exif = Image.Exif()
        if exif_orientation:
            exif[0x0112] = exif_orientation
        Image.new("RGB", (120, 80), (200, 30, 10)).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def test_photos_become_valid_secondary_capture_in_the_pacs(
    api, user, celery_worker, orthanc_clean, tmp_path
):
    upright = tmp_path / "wound.jpg"
    upright.write_bytes(photo_bytes("jpeg"))
    rotated = tmp_path / "film.jpg"
    rotated.write_bytes(photo_bytes("jpeg", exif_orientation=6))
    png = tmp_path / "scan.png"
    png.write_bytes(photo_bytes("png"))
    metadata = {
        "patient_name": "Photo^Patiënt",
        "patient_id": "PH-1",
        "patient_birth_date": "1980-02-03",
        "patient_sex": "F",
        "study_date": "2026-11-25",
        "study_description": "Wound photos",
    }
    upload = send_upload(api, [upright, rotated, png], metadata=metadata)
    status = wait_for(api, upload["upload_id"], FINAL)
    assert status["state"] == "completed", status
    assert status["pacs"]["acknowledged_instances"] == 3
    uids = orthanc_clean.sop_instance_uids()
    assert len(uids) == 3
    series = set()
    for uid in uids:
        data = orthanc_clean.instance_file(uid)
        assert dciodvfy_errors(data, tmp_path) == []
        ds = pydicom.dcmread(io.BytesIO(data))
        assert str(ds.PatientName) == "Photo^Patiënt" and ds.PatientID == "PH-1"
        assert ds.PatientBirthDate == "19800203" and ds.StudyDate == "20261125"
        assert ds.IssuerOfPatientID == user.facility.issuer_of_patient_id
        assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
        series.add(ds.SeriesInstanceUID)
        if ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit and ds.Rows == 80:
            # The upright JPEG is kept byte for byte inside the DICOM object.
            assert upright.read_bytes() in data
        if ds.Rows == 120:
            assert ds.Columns == 80  # the EXIF-rotated photo was turned upright
        if ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian:
            assert (
                ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
            )  # alpha dropped
    assert len(series) == 1  # one series per upload


def test_dicom_without_a_file_header_is_wrapped_and_sent(api, celery_worker, orthanc_clean):
    path = PYDICOM_DATA / "test_files/ExplVR_LitEndNoMeta.dcm"
    upload = send_upload(api, [path])
    status = wait_for(api, upload["upload_id"], FINAL)
    assert status["state"] == "completed", status
    assert any("no DICOM file header" in w for w in status["warnings"])
    uid = str(pydicom.dcmread(path, force=True).SOPInstanceUID)
    stored = orthanc_clean.instance_file(uid)
    assert stored[128:132] == b"DICM" and stored.endswith(path.read_bytes())


def test_a_pdf_named_dcm_and_an_empty_file_are_refused_with_reasons(
    api, celery_worker, orthanc_clean, tmp_path
):
    pdf = tmp_path / "report.dcm"
    pdf.write_bytes(b"%PDF-1.4\n" + os.urandom(300))
    status = wait_for(api, send_upload(api, [pdf])["upload_id"], FINAL)
    assert status["state"] == "failed" and status["error"]["code"] == "no_dicom_files"
    assert status["skipped_files"] == [
        {"name": "report.dcm", "reason": "a PDF document, not a DICOM image"}
    ]


def test_corpus_of_every_pydicom_file_is_forwarded_or_refused_with_a_reason(
    api, celery_worker, orthanc_clean
):
    paths = sorted(p for p in PYDICOM_DATA.rglob("*") if p.is_file() and p.stat().st_size > 0)
    upload = send_upload(api, paths, allow_partial=True)
    status = wait_for(api, upload["upload_id"], FINAL, timeout=300)
    assert status["state"] in {"completed", "failed"}, status
    if status["state"] == "failed":
        assert status["error"]["code"] == "pacs_refused_instances", status["error"]
    held = orthanc_clean.sop_instance_uids()
    outcome: Counter[str] = Counter()
    for f in UploadFile.objects.filter(session_id=upload["upload_id"], parent__isnull=True):
        derived = list(UploadFile.objects.filter(parent=f)) or [f]
        for g in derived:
            if g.kind == FileKind.DICOM and g.pacs_status in (
                PacsStatus.STORED,
                PacsStatus.ALREADY_DELIVERED,
            ):
                assert g.sop_instance_uid in held, g.name
                outcome["forwarded"] += 1
            elif g.kind == FileKind.DICOM:
                assert g.pacs_status == PacsStatus.FAILED and g.pacs_reason, g.name
                outcome["refused by the PACS"] += 1
            else:
                assert g.kind in (FileKind.SKIPPED, FileKind.REJECTED) and g.reason, (
                    g.name,
                    g.kind,
                )
                outcome[g.kind] += 1
    print(f"\npydicom corpus of {len(paths)} files: {dict(outcome)}")
    assert outcome["forwarded"] >= 100


def test_folder_with_relative_paths_and_a_gap_in_a_series(
    api, celery_worker, orthanc_clean, tmp_path
):
    paths = write_study(tmp_path / "study", instances=5, instance_bytes=10_000)
    sent = [p for p in paths if p.name != "IM00003.dcm"]  # one image of the series is missing
    body = {
        "files": [{"name": f"CD/DICOM/{p.name}", "size": p.stat().st_size} for p in sent],
        "chunk_size": 256 * 1024,
    }
    upload = api.post("/api/v1/upload/init", body, format="json").json()
    data = b"".join(p.read_bytes() for p in sent)
    for index in range(upload["total_chunks"]):
        chunk = data[index * 256 * 1024 : (index + 1) * 256 * 1024]
        api.put(
            f"/api/v1/upload/{upload['upload_id']}/chunk?index={index}",
            data=chunk,
            content_type="application/octet-stream",
            HTTP_CONTENT_MD5=content_md5(chunk),
        )
    api.post(f"/api/v1/upload/{upload['upload_id']}/complete")
    status = wait_for(api, upload["upload_id"], FINAL)
    assert status["state"] == "completed", status
    series = status["studies"][0]["series"][0]
    assert series["instances"] == 4 and series["expected_instances"] == 5
    assert series["instance_number_gaps"] == [3]
    assert "Series 1: 4 of 5 images (missing image numbers 3)" in " ".join(status["warnings"])
    assert {sop_uid(p) for p in sent} == orthanc_clean.sop_instance_uids()


def test_rar_of_dicom_files_reaches_the_pacs(api, celery_worker, orthanc_clean, tmp_path):
    ct, sr = sample_paths(["test_files/CT_small.dcm", "test_files/test-SR.dcm"])
    archive = rar5_stored(
        tmp_path / "referral.rar",
        [("Patient/CT/IM1", ct.read_bytes()), ("Patient/Report/SR1", sr.read_bytes())],
    )
    status = wait_for(api, send_upload(api, [archive])["upload_id"], FINAL)
    assert status["state"] == "completed", status
    for path in (ct, sr):
        assert orthanc_clean.instance_file(sop_uid(path)) == path.read_bytes()


def noisy_photo(fmt: str, **save: object) -> bytes:
    """A photo with real detail (compressed data worth damaging), the same on every run."""
    buffer = io.BytesIO()
    pixels = random.Random(5).randbytes(480 * 320 * 3)
    Image.frombytes("RGB", (480, 320), pixels).save(buffer, fmt, **save)
    return buffer.getvalue()


def test_damaged_photos_are_refused_at_once_with_a_reason_and_the_rest_is_sent(
    api, celery_worker, orthanc_clean, tmp_path
):
    jpeg, png = noisy_photo("JPEG", quality=90), noisy_photo("PNG")
    rotated = photo_bytes("jpeg", exif_orientation=6)
    middle = len(jpeg) // 2
    photos = {
        "good.jpg": jpeg,
        "cut.jpg": jpeg[:middle],  # upright: its bytes would be kept, so they are decoded
        "noise.jpg": jpeg[:middle] + random.Random(0).randbytes(2000) + jpeg[middle + 2000 :],
        "cut-rotated.jpg": rotated[: len(rotated) // 2],  # re-encoded: fails while decoding
        "cut.png": png[: len(png) // 2],
    }
    paths = []
    for name, data in photos.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    upload = send_upload(api, paths, allow_partial=True, metadata={"patient_id": "PH-2"})
    # At once: no crashed task to wait out (each would hold the upload for a lease).
    status = wait_for(api, upload["upload_id"], FINAL, timeout=30)
    assert status["state"] == "completed", status
    assert status["pacs"]["acknowledged_instances"] == 1
    assert len(orthanc_clean.sop_instance_uids()) == 1
    rejected = {f["name"]: f["reason"] for f in status["rejected_files"]}
    assert set(rejected) == {"cut.jpg", "noise.jpg", "cut-rotated.jpg", "cut.png"}
    for reason in rejected.values():
        assert "damaged and could not be read" in reason and "Error" not in reason


def test_a_zip_of_small_zip_bombs_is_refused_as_a_whole(
    api, celery_worker, orthanc_clean, tmp_path
):
    """Each inner bomb stays under the 8 MiB from which the ratio is judged; the upload's
    archives together expand 18 MiB from about 60 kB, and nothing of it is sent."""
    ct = sample_paths(["test_files/CT_small.dcm"])[0]
    bombs = []
    for n in range(3):
        bomb = make_zip(tmp_path / f"bomb{n}.zip", [("zeros.bin", b"\0" * 6 * 1024**2)])
        bombs.append((f"part{n}.zip", bomb.read_bytes()))
    outer = make_zip(
        tmp_path / "study.zip",
        [("IM1", ct.read_bytes()), *bombs],
        compression=zipfile.ZIP_STORED,
    )
    upload = send_upload(api, [outer], allow_partial=True)
    status = wait_for(api, upload["upload_id"], FINAL)
    assert status["state"] == "failed", status
    assert status["error"]["code"] == "archive_ratio_exceeded"
    assert orthanc_clean.sop_instance_uids() == set()
