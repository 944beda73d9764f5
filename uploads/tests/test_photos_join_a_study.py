"""Photos added to an earlier study ("Add images" on the app's Reports screen) name it in
``metadata.study_instance_uid``: converted, they join that study, and init refuses a study
the account may not see."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from accounts.models import Role
from accounts.tests.factories import UserFactory
from uploads.models import Study, UploadFile
from uploads.services.processing import upload_process
from uploads.tests.fixtures import client_for
from uploads.tests.helpers import sample_paths
from uploads.tests.test_services_processing import received_upload

pytestmark = pytest.mark.django_db(transaction=True)


def photo(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.new("RGB", (120, 80), (200, 30, 10)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue())
    return path


def delivered_study_uid(api: Any) -> str:
    upload_id = received_upload(api, sample_paths(["test_files/CT_small.dcm"]))
    upload_process(upload_id=upload_id)
    return Study.objects.get(session_id=upload_id).study_instance_uid


def test_photos_naming_a_study_the_account_sent_join_it(api, tmp_path, upload_storage_dir):
    study_uid = delivered_study_uid(api)
    upload_id = received_upload(
        api,
        [photo(tmp_path / "wound.jpg")],
        metadata={"patient_name": "Doe^Jane", "patient_id": "P1", "study_instance_uid": study_uid},
        force_upload=True,
    )
    upload_process(upload_id=upload_id)
    assert list(
        Study.objects.filter(session_id=upload_id).values_list("study_instance_uid", flat=True)
    ) == [study_uid]
    converted = UploadFile.objects.filter(session_id=upload_id, parent__isnull=False).get()
    assert converted.study_instance_uid == study_uid


def test_a_study_of_another_clinic_or_no_study_is_refused(api, tmp_path, upload_storage_dir):
    study_uid = delivered_study_uid(client_for(UserFactory(role=Role.CLINICIAN)))
    for uid, code, status in [
        (study_uid, "unknown_study", 404),
        ("1.2.3.999", "unknown_study", 404),
        ("not-a-uid", "invalid_manifest", 400),
    ]:
        response = api.post(
            "/api/v1/upload/init",
            {
                "files": [{"name": "wound.jpg", "size": 100}],
                "metadata": {"study_instance_uid": uid},
            },
            format="json",
        )
        assert response.status_code == status, response.json()
        error = response.json()["error"]
        assert error["code"] == code and error["message"] and error["hint"]


@pytest.mark.e2e
def test_photos_joining_a_study_carry_its_patient_not_the_typed_one(
    api, tmp_path, upload_storage_dir, orthanc_clean
):
    from pydicom import dcmread

    from uploads.models import UploadSession
    from uploads.services.forwarding import upload_forward

    study_uid = delivered_study_uid(api)
    study = Study.objects.get(study_instance_uid=study_uid)
    assert study.patient_name and study.patient_name != "Doe^Jane"
    upload_id = received_upload(
        api,
        [photo(tmp_path / "wound.jpg")],
        metadata={
            "patient_name": "Doe^Jane",
            "patient_id": "OTHER-1",
            "patient_birth_date": "19010101",
            "patient_sex": "F",
            "accession_number": "TYPED-ACC",
            "study_date": "20000101",
            "study_description": "Typed description",
            "study_instance_uid": study_uid,
        },
        force_upload=True,
    )
    session = UploadSession.objects.get(pk=upload_id)
    assert session.metadata["patient_name"] == study.patient_name  # the study's, at init
    assert "Doe^Jane" not in str(session.metadata)
    upload_process(upload_id=upload_id)
    upload_forward(upload_id=upload_id)
    session.refresh_from_db()
    assert session.state == "completed", session.error
    converted = UploadFile.objects.filter(session_id=upload_id, parent__isnull=False).get()
    header = dcmread(
        io.BytesIO(orthanc_clean.instance_file(converted.sop_instance_uid)),
        stop_before_pixels=True,
    )
    assert header.StudyInstanceUID == study_uid
    assert str(header.PatientName) == study.patient_name
    assert header.PatientID == study.patient_id
    assert header.get("PatientBirthDate", "") == study.patient_birth_date
    assert header.get("PatientSex", "") == study.patient_sex
    assert header.get("AccessionNumber", "") == study.accession_number
    assert header.get("StudyDate", "") == study.study_date
    assert header.get("StudyDescription", "") == study.study_description


def test_a_study_whose_upload_an_administrator_deleted_is_refused_with_that_reason(
    api, tmp_path, upload_storage_dir
):
    from uploads.models import UploadSession

    study_uid = delivered_study_uid(api)
    UploadSession.objects.filter(studies__study_instance_uid=study_uid).delete()
    response = api.post(
        "/api/v1/upload/init",
        {
            "files": [{"name": "wound.jpg", "size": 100}],
            "metadata": {"study_instance_uid": study_uid},
        },
        format="json",
    )
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "unknown_study"
    assert "an administrator has removed it" in error["message"]
    assert error["hint"].startswith("Send the images as a new study")
