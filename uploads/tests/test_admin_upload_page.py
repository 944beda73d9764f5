"""An upload's page in the admin: its state, readable sizes, what happened when, each file
not sent with its reason, the PACS receipt, and retry and cancel through the upload
services (refused with the service's sentence where they cannot run). Django's test
client against the real admin and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import User
from accounts.services.audit import audit_record
from accounts.tests.factories import UserFactory
from uploads.admin import readable_size
from uploads.models import FileKind, PacsStatus, Study, UploadFile, UploadSession, UploadState

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    root = User.objects.create_superuser("root", "root@example.org", "Root-Password-123")
    client.force_login(root)
    return client


def make_upload(state: str = UploadState.COMPLETED, **fields: object) -> UploadSession:
    owner = UserFactory()
    now = timezone.now()
    upload = UploadSession.objects.create(
        owner=owner,
        facility=owner.facility,
        state=state,
        total_size=1_234_567_890,
        chunk_size=8 * 1024 * 1024,
        total_chunks=148,
        service_level="urgent",
        **fields,
    )
    UploadSession.objects.filter(pk=upload.pk).update(created_at=now - timedelta(minutes=5))
    upload.refresh_from_db()
    return upload


def add_files(upload: UploadSession) -> None:
    rows = [
        ("CT0001.dcm", FileKind.DICOM, "", PacsStatus.STORED),
        (
            "CT0002.dcm",
            FileKind.REJECTED,
            "The file is damaged: its DICOM data ends early.",
            PacsStatus.NOT_SENT,
        ),
        (
            "notes.txt",
            FileKind.SKIPPED,
            "Not a DICOM file or an image: skipped.",
            PacsStatus.NOT_SENT,
        ),
    ]
    for position, (name, kind, reason, pacs_status) in enumerate(rows):
        UploadFile.objects.create(
            session=upload,
            position=position,
            name=name,
            size=2_500_000,
            offset=position * 2_500_000,
            kind=kind,
            reason=reason,
            pacs_status=pacs_status,
        )


def test_the_upload_page_shows_state_size_timeline_files_and_receipt(admin_client):
    confirmed_at = timezone.now()
    upload = make_upload(
        received_at=confirmed_at - timedelta(minutes=3),
        completed_at=confirmed_at,
        destination="Main PACS",
        receipt={
            "destinations": {
                "env:Main PACS": {
                    "name": "Main PACS",
                    "acknowledged": ["1.2.3"],
                    "failed": {},
                    "confirmed_at": confirmed_at.isoformat(),
                    "confirmed_instances": 1,
                }
            }
        },
    )
    add_files(upload)
    Study.objects.create(session=upload, study_instance_uid="1.2.9", modalities=["CT"], instances=1)
    audit_record(
        action="data_import",
        user=upload.owner,
        object_type="upload",
        object_id=str(upload.id),
        detail={"phase": "started"},
    )
    audit_record(
        action="instances_transferred",
        object_type="upload",
        object_id=str(upload.id),
        detail={"phase": "acknowledged", "destination": "Main PACS", "instances": 1},
    )

    page = admin_client.get(f"/admin/uploads/uploadsession/{upload.pk}/change/")
    assert page.status_code == 200
    content = page.content.decode()
    assert "Received by PACS" in content  # the state, in words
    assert "1.2 GB" in content and "2.5 MB" in content
    assert "Upload started" in content and "PACS stored the images" in content
    assert "Every byte received" in content and "Delivered to the PACS" in content
    assert "CT0002.dcm" in content and "The file is damaged: its DICOM data ends early." in content
    assert "notes.txt" in content and "Not a DICOM file or an image: skipped." in content
    assert "CT0001.dcm" not in content  # sent files are not listed as problems
    assert "Main PACS" in content and "1 images listed by the PACS" in content
    assert 'name="_save"' not in content  # nothing on the page is edited by hand
    # A delivered upload can be neither retried nor cancelled: no buttons for it.
    assert "Retry sending to the PACS" not in content and "Cancel this upload" not in content


def test_the_receipt_counts_the_clinics_images_and_the_relays_note_apart(admin_client):
    confirmed_at = timezone.now()
    upload = make_upload(
        completed_at=confirmed_at,
        destination="Main PACS",
        receipt={
            "destinations": {
                "env:Main PACS": {
                    "name": "Main PACS",
                    "acknowledged": ["1.2.3", "1.2.4", "2.25.9"],
                    "failed": {},
                    "confirmed_at": confirmed_at.isoformat(),
                    "confirmed_instances": 3,  # every instance sent, the note included
                },
                "db:7": {"name": "Second PACS", "acknowledged": ["1.2.3", "2.25.9"]},
            }
        },
    )
    for position, (uid, relay) in enumerate([("1.2.3", False), ("1.2.4", False), ("2.25.9", True)]):
        UploadFile.objects.create(
            session=upload,
            position=position,
            name=f"file-{position}.dcm",
            size=1000,
            offset=0,
            kind=FileKind.DICOM,
            sop_instance_uid=uid,
            pacs_status=PacsStatus.STORED,
            added_by_relay=relay,
        )
    audit_record(
        action="instances_transferred",
        object_type="upload",
        object_id=str(upload.id),
        detail={
            "phase": "acknowledged",
            "destination": "Main PACS",
            "instances": 2,
            "relay_added_instances": 1,
        },
    )

    content = admin_client.get(f"/admin/uploads/uploadsession/{upload.pk}/change/").content.decode()
    note = "1 object added by RelayPACS (the clinic&#x27;s note)"
    assert f"2 images listed by the PACS; {note}" in content
    assert f"not confirmed yet: 1 images stored, 0 refused; {note}" in content
    assert f"Main PACS, 2 images, {note}" in content  # the timeline
    assert "3 images" not in content


def test_the_list_shows_state_and_level_before_ids_and_readable_sizes(admin_client):
    make_upload()
    page = admin_client.get("/admin/uploads/uploadsession/")
    assert page.status_code == 200
    columns = page.context["cl"].list_display
    assert columns.index("state") < columns.index("short_id")
    assert columns.index("service_level") < columns.index("short_id")
    assert "1.2 GB" in page.content.decode()
    assert admin_client.get("/admin/uploads/study/").status_code == 200


def test_retry_of_an_upload_waiting_for_the_pacs_makes_it_due_now(admin_client):
    later = timezone.now() + timedelta(hours=1)
    upload = make_upload(state=UploadState.WAITING_FOR_PACS, next_retry_at=later)
    response = admin_client.post(f"/admin/uploads/uploadsession/{upload.pk}/retry/", follow=True)
    assert response.status_code == 200
    upload.refresh_from_db()
    assert upload.state == UploadState.WAITING_FOR_PACS and upload.next_retry_at < later
    page = admin_client.get(f"/admin/uploads/uploadsession/{upload.pk}/change/").content.decode()
    assert "Retry sending to the PACS" in page and "Cancel this upload" in page
    assert "is being sent to the PACS again" in response.content.decode()


def test_cancel_stops_an_upload(admin_client):
    upload = make_upload(state=UploadState.RECEIVING)
    page = admin_client.get(f"/admin/uploads/uploadsession/{upload.pk}/change/").content.decode()
    assert "Cancel this upload" in page and "Retry sending to the PACS" not in page
    response = admin_client.post(f"/admin/uploads/uploadsession/{upload.pk}/cancel/", follow=True)
    upload.refresh_from_db()
    assert upload.state == UploadState.CANCELLED
    assert "The upload is cancelled" in response.content.decode()


def test_retry_and_cancel_are_refused_with_the_services_sentence(admin_client):
    upload = make_upload(state=UploadState.COMPLETED)
    cancel = admin_client.post(f"/admin/uploads/uploadsession/{upload.pk}/cancel/", follow=True)
    assert (
        "This study was already delivered to the PACS and cannot be cancelled."
        in cancel.content.decode()
    )
    retry = admin_client.post(f"/admin/uploads/uploadsession/{upload.pk}/retry/", follow=True)
    assert "There is nothing to retry" in retry.content.decode()
    upload.refresh_from_db()
    assert upload.state == UploadState.COMPLETED


def test_a_get_does_not_act(admin_client):
    upload = make_upload(state=UploadState.RECEIVING)
    response = admin_client.get(f"/admin/uploads/uploadsession/{upload.pk}/cancel/")
    assert response.status_code == 302
    upload.refresh_from_db()
    assert upload.state == UploadState.RECEIVING


@pytest.mark.parametrize(
    ("size", "shown"),
    [(0, "0 bytes"), (999, "999 bytes"), (1_500, "1.5 kB"), (1_234_567_890, "1.2 GB")],
)
def test_sizes_are_readable(size, shown):
    assert readable_size(size) == shown


def test_an_unknown_upload_is_not_found(admin_client):
    assert (
        admin_client.post(f"/admin/uploads/uploadsession/{uuid.uuid4()}/retry/").status_code == 404
    )
