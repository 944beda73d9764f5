"""The clinic's note and service level reach the reader in the PACS: one Basic Text SR per
upload and study, in a series of its own, valid by dciodvfy, the received images untouched;
status keeps the clinic's instances and the relay's apart."""

from __future__ import annotations

import io
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import dcmread

from accounts.models import AuditEvent
from accounts.tests.factories import FacilityFactory, UserFactory
from uploads import storage
from uploads.clinical_object import (
    PATIENT_STUDY_KEYWORDS,
    TITLE,
    ClinicalInformation,
    clinical_dataset,
    clinical_object_uids,
    clinical_object_wanted,
)
from uploads.models import FileKind, UploadFile, UploadSession
from uploads.services.processing import upload_process
from uploads.tests.fixtures import client_for
from uploads.tests.helpers import sample_paths, sop_uid
from uploads.tests.test_pipeline_e2e import FINAL, send_upload, wait_for
from uploads.tests.test_services_processing import received_upload

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
NOTE = "Fall from a ladder; pain in the left wrist. Ärztin bittet um Rückruf."
INFO = ClinicalInformation(
    clinical_notes=NOTE,
    service_level="Urgent",
    facility_name="Clinique du Nord",
    sender_name="Dr Jane Sender",
    sent_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
)


def content(ds: Any) -> dict[str, str]:
    """Concept name → value of the SR's content items."""
    return {
        str(item.ConceptNameCodeSequence[0].CodeMeaning): str(
            item.get("TextValue") or item.get("DateTime")
        )
        for item in ds.ContentSequence
    }


def dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize(
    "name",
    ["test_files/CT_small.dcm", "charset_files/chrH31.dcm", "charset_files/chrRuss.dcm"],
)
def test_the_object_passes_dciodvfy_and_joins_the_study_of_its_first_image(name, tmp_path):
    image = sample_paths([name])[0]
    header = dcmread(image, stop_before_pixels=True)
    ds = clinical_dataset(
        header=dcmread(image, stop_before_pixels=True, specific_tags=list(PATIENT_STUDY_KEYWORDS)),
        info=INFO,
        series_instance_uid="1.2.826.0.1.3680043.8.498.1",
        sop_instance_uid="1.2.826.0.1.3680043.8.498.2",
    )
    dest = tmp_path / "sr.dcm"
    ds.save_as(dest, enforce_file_format=True)
    assert dciodvfy_errors(dest) == []
    sr = dcmread(dest)
    assert (sr.SOPClassUID, sr.Modality) == (BASIC_TEXT_SR, "SR")
    assert (sr.CompletionFlag, sr.VerificationFlag) == ("PARTIAL", "UNVERIFIED")
    assert sr.ConceptNameCodeSequence[0].CodeMeaning == TITLE
    assert "Clinical information" in sr.SeriesDescription
    assert sr.StudyInstanceUID == header.StudyInstanceUID
    assert sr.SeriesInstanceUID != header.SeriesInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
        assert str(sr.get(keyword, "")) == str(header.get(keyword, "")), keyword
    assert content(sr) == {
        "Clinical note": NOTE,
        "Service level": "Urgent",
        "Sending facility": "Clinique du Nord",
        "Sent by": "Dr Jane Sender",
        "Time sent": "20260102030405+0000",
    }


def test_its_uids_come_from_the_root_and_the_same_upload_and_study_give_the_same():
    upload_id = uuid.uuid4()
    root = "1.2.826.0.1.3680043.8.498."
    first = clinical_object_uids(upload_id=upload_id, study_instance_uid="1.2.3", uid_root=root)
    assert first == clinical_object_uids(
        upload_id=upload_id, study_instance_uid="1.2.3", uid_root=root
    )
    assert all(uid.startswith(root) for uid in first) and first[0] != first[1]
    assert first != clinical_object_uids(
        upload_id=upload_id, study_instance_uid="1.2.4", uid_root=root
    )
    assert first != clinical_object_uids(
        upload_id=uuid.uuid4(), study_instance_uid="1.2.3", uid_root=root
    )


@pytest.mark.parametrize(
    ("notes", "level", "enabled", "wanted"),
    [
        ("", "routine", True, False),
        ("   ", "routine", True, False),
        ("Cough for three weeks.", "routine", True, True),
        ("", "urgent", True, True),
        ("", "stat", True, True),
        ("Cough for three weeks.", "emergency", False, False),
    ],
)
def test_it_is_made_for_a_note_or_a_level_above_routine_unless_turned_off(
    settings, notes, level, enabled, wanted
):
    settings.PACS_CLINICAL_NOTES_OBJECT = enabled
    session = UploadSession(clinical_notes=notes, service_level=level)
    assert clinical_object_wanted(session=session) is wanted


# --- the processing service, in this process ---------------------------------------------


def _relay_files(upload_id: uuid.UUID) -> list[UploadFile]:
    return list(UploadFile.objects.filter(session_id=upload_id, added_by_relay=True))


@pytest.mark.django_db(transaction=True)
def test_processing_adds_one_object_per_study_after_the_last_file_and_again_the_same(settings):
    facility = FacilityFactory(name="Clinique du Nord")
    sender = UserFactory(facility=facility, full_name="Dr Jane Sender")
    paths = sample_paths(["test_files/CT_small.dcm", "charset_files/chrGreek.dcm"])
    upload_id = received_upload(
        client_for(sender), paths, clinical_notes=NOTE, service_level="stat"
    )
    assert upload_process(upload_id=upload_id)
    added = _relay_files(upload_id)
    studies = {str(dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in paths}
    assert {f.study_instance_uid for f in added} == studies and len(added) == len(studies)
    last = max(
        UploadFile.objects.filter(session_id=upload_id, added_by_relay=False).values_list(
            "position", flat=True
        )
    )
    assert sorted(f.position for f in added) == [last + 1, last + 2]
    assert all(f.parent_id is None and f.kind == FileKind.DICOM for f in added)
    work = storage.work_dir(upload_id=upload_id)
    written = {f.sop_instance_uid: (work / f.path).read_bytes() for f in added}
    for f in added:
        sr = dcmread(io.BytesIO(written[f.sop_instance_uid]))
        assert sr.SOPInstanceUID == f.sop_instance_uid
        assert sr.SOPInstanceUID.startswith(settings.DICOM_UID_ROOT)
        assert content(sr)["Clinical note"] == NOTE
        assert content(sr)["Service level"] == "STAT"
        assert content(sr)["Sending facility"] == "Clinique du Nord"
        assert content(sr)["Sent by"] == "Dr Jane Sender"

    # Checked again (a worker took the upload over): the same objects, byte for byte.
    UploadSession.objects.filter(pk=upload_id).update(
        state="processing", lease_until=None, lease_owner=""
    )
    assert upload_process(upload_id=upload_id)
    again = _relay_files(upload_id)
    assert {f.sop_instance_uid for f in again} == set(written)
    for f in again:
        assert (work / f.path).read_bytes() == written[f.sop_instance_uid]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("enabled", "notes", "level"),
    [(False, NOTE, "urgent"), (True, "", "routine")],
    ids=["turned off", "routine without a note"],
)
def test_no_object_is_added_when_off_or_when_there_is_nothing_to_tell(
    settings, enabled, notes, level
):
    settings.PACS_CLINICAL_NOTES_OBJECT = enabled
    api = client_for(UserFactory())
    upload_id = received_upload(
        api,
        sample_paths(["test_files/CT_small.dcm"]),
        clinical_notes=notes,
        service_level=level,
    )
    assert upload_process(upload_id=upload_id)
    assert _relay_files(upload_id) == []
    assert UploadFile.objects.filter(session_id=upload_id, kind=FileKind.DICOM).count() == 1


# --- end to end: the real worker and Orthanc ---------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_note_reaches_the_pacs_in_a_series_of_its_own_beside_the_untouched_image(
    celery_worker, orthanc_clean
):
    sender = UserFactory(full_name="Dr Jane Sender")
    api = client_for(sender)
    image = sample_paths(["test_files/CT_small.dcm"])[0]
    upload = send_upload(api, [image], clinical_notes=NOTE, service_level="emergency")
    status = wait_for(api, upload["upload_id"], FINAL)
    assert status["state"] == "completed", status

    added = status["pacs"]["relay_added_instances"]
    assert len(added) == 1
    assert orthanc_clean.sop_instance_uids() == {sop_uid(image), added[0]}
    assert orthanc_clean.instance_file(sop_uid(image)) == image.read_bytes()
    sr = pydicom.dcmread(io.BytesIO(orthanc_clean.instance_file(added[0])))
    original = dcmread(image, stop_before_pixels=True)
    assert (sr.SOPClassUID, sr.Modality) == (BASIC_TEXT_SR, "SR")
    assert sr.StudyInstanceUID == original.StudyInstanceUID
    assert sr.SeriesInstanceUID != original.SeriesInstanceUID
    assert sr.PatientID == original.PatientID
    assert content(sr)["Clinical note"] == NOTE
    assert content(sr)["Service level"] == "Emergency"
    assert content(sr)["Sent by"] == "Dr Jane Sender"
    # Orthanc files it in the same study, as a second series.
    study_id = orthanc_clean.session.post(
        f"{orthanc_clean.url}/tools/lookup", data=str(original.StudyInstanceUID), timeout=30
    ).json()[0]["ID"]
    series = orthanc_clean._get(f"/studies/{study_id}/series")
    assert sorted(s["MainDicomTags"].get("Modality") for s in series) == ["CT", "SR"]

    # The clinic's numbers count the clinic's image; the relay's object is listed apart.
    assert status["pacs"]["acknowledged_instances"] == 1
    assert status["pacs"]["pending_instances"] == 0
    receipt = next(iter(status["pacs"]["receipt"].values()))
    assert receipt["acknowledged_instances"] == 1 and receipt["confirmed_instances"] == 1
    assert sum(s["instances"] for s in status["studies"]) == 1
    # So does the pacs.receipt event (and the audit entry it leaves), the note apart.
    deadline = time.monotonic() + 30
    while not (
        acknowledged := AuditEvent.objects.filter(
            action="instances_transferred", object_id=upload["upload_id"]
        ).filter(detail__phase="acknowledged")
    ).exists():
        assert time.monotonic() < deadline, "no pacs.receipt audit entry"
        time.sleep(0.1)
    detail = acknowledged.get().detail
    assert (detail["instances"], detail["relay_added_instances"]) == (1, 1)
    assert not storage.stream_exists(upload_id=upload["upload_id"])  # no PHI left behind


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_pacs_that_refuses_the_relays_object_still_gets_the_images_delivered(orthanc_clean):
    from uploads.services.forwarding import RELAY_OBJECT_REFUSED, upload_forward

    image = sample_paths(["test_files/CT_small.dcm"])[0]
    upload_id = received_upload(
        client_for(UserFactory()), [image], clinical_notes=NOTE, service_level="urgent"
    )
    assert upload_process(upload_id=upload_id)
    (relay,) = _relay_files(upload_id)
    # The PACS refuses this object (here: it cannot parse it; others refuse SR classes).
    work_file = storage.work_dir(upload_id=upload_id) / relay.path
    work_file.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"\x01" * 64)
    UploadFile.objects.filter(pk=relay.pk).update(size=work_file.stat().st_size)

    upload_forward(upload_id=upload_id)

    session = UploadSession.objects.get(pk=upload_id)
    assert session.state == "completed", session.error
    assert RELAY_OBJECT_REFUSED in session.warnings
    held = orthanc_clean.sop_instance_uids()
    assert sop_uid(image) in held and relay.sop_instance_uid not in held
    from uploads.selectors import upload_status

    status = upload_status(session=session)
    assert status["pacs"]["failed_instances"] == []  # no image of the clinic was refused
    assert status["pacs"]["acknowledged_instances"] == 1
    assert RELAY_OBJECT_REFUSED in status["warnings"]
