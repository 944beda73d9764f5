"""The synchronisation never takes RelayPACS's own clinical-information SR for a report: it
knows it by the SOP Instance UID recorded when it was made, not by UID prefix, while an SR
stored by the hospital's reporting system (same UID root: pydicom's) is taken in."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.conf import settings as django_settings

from accounts.clientinfo import ClientInfo
from accounts.models import Role
from accounts.tests.factories import UserFactory
from reports.models import PacsReportObject, Report, ReportStatus
from reports.services import sync
from uploads.models import RelayAddedObject, UploadFile, UploadSession
from uploads.selectors import relay_added_sop_instance_uids
from uploads.services.removal import upload_admin_delete
from uploads.tests.fixtures import client_for
from uploads.tests.helpers import sample_paths
from uploads.tests.test_pipeline_e2e import FINAL, send_upload, wait_for

from .test_services_sync import store, text_sr


def _report_of(upload_id: str, timeout: float = 60) -> Report:
    deadline = time.monotonic() + timeout
    while True:
        report = Report.objects.filter(uploads=upload_id).first()
        if report is not None:
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"no report opened for upload {upload_id} in {timeout} s")
        time.sleep(0.2)


@pytest.mark.django_db
def test_the_selector_knows_only_the_uids_the_relay_recorded():
    root = django_settings.DICOM_UID_ROOT
    RelayAddedObject.objects.create(sop_instance_uid=f"{root}1", study_instance_uid=f"{root}9")
    asked = [f"{root}1", f"{root}2", "1.2.3"]
    assert relay_added_sop_instance_uids(sop_instance_uids=asked) == {f"{root}1"}
    assert relay_added_sop_instance_uids(sop_instance_uids=[]) == set()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_the_relays_note_leaves_the_report_assigned_and_the_hospitals_sr_is_taken(
    settings: Any, upload_storage_dir: Any, celery_worker: Any, orthanc_clean: Any
) -> None:
    settings.UPLOAD_STORAGE_DIR = upload_storage_dir
    sender = client_for(UserFactory(role=Role.CLINICIAN))
    upload = send_upload(
        sender,
        sample_paths(["test_files/CT_small.dcm"]),
        clinical_notes="Fall from a ladder.",
        service_level="urgent",
    )
    status = wait_for(sender, upload["upload_id"], FINAL)
    assert status["state"] == "completed", status
    [relay_uid] = status["pacs"]["relay_added_instances"]
    assert relay_uid in orthanc_clean.sop_instance_uids()
    report = _report_of(upload["upload_id"])
    assert report.status == ReportStatus.ASSIGNED

    # The PACS lists the relay's SR among the study's report objects; it is not read.
    summary = sync.reports_sync()
    report.refresh_from_db()
    assert report.status == ReportStatus.ASSIGNED and report.findings == ""
    assert summary.objects_new == 0
    assert not PacsReportObject.objects.filter(sop_instance_uid=relay_uid).exists()

    # A preliminary SR of the hospital's reporting system, its UID under the same root.
    hospital_uid = store(
        orthanc_clean,
        text_sr(
            report.study_instance_uid,
            "Draft: no fracture seen.",
            completion="PARTIAL",
            verification="UNVERIFIED",
        ),
    )
    assert hospital_uid.startswith(django_settings.DICOM_UID_ROOT)
    assert relay_uid.startswith(django_settings.DICOM_UID_ROOT)
    summary = sync.reports_sync()
    report.refresh_from_db()
    assert (report.status, report.findings) == (ReportStatus.PENDING, "Draft: no fracture seen.")
    assert summary.objects_new == 1 and summary.outcomes == {"preliminary": 1}
    assert UploadFile.objects.filter(sop_instance_uid=relay_uid, added_by_relay=True).exists()

    # An administrator deletes the upload: the relay's SR stays in the PACS, and the record
    # of it outlives the upload, so the next cycles still never read it.
    admin = UserFactory(role=Role.ADMIN)
    upload_admin_delete(
        session=UploadSession.objects.get(pk=upload["upload_id"]),
        by=admin,
        client=ClientInfo(ip_address="127.0.0.1", user_agent="test"),
    )
    assert not UploadFile.objects.filter(sop_instance_uid=relay_uid).exists()
    PacsReportObject.objects.filter(report=report).delete()  # make the sync look again
    summary = sync.reports_sync()
    assert not PacsReportObject.objects.filter(sop_instance_uid=relay_uid).exists()
    assert summary.objects_new == 1  # the hospital's SR only
