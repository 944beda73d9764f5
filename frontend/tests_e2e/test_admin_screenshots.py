"""The admin site in Debian's Chromium (Playwright) against the live Django test server:
an administrator signs in, sees the grouped index and an upload's page; the screenshots
in docs/screenshots/ (admin-index.png, admin-upload.png) are taken here."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect, sync_playwright

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PASSWORD = "Blue-Harbour-Lantern-42"  # noqa: S105 (a test account of the test database)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-gpu"]
# Signing in and two pages, with Chromium starting: seconds; a slow machine gets plenty.
BROWSER_TIMEOUT_SECONDS = 180


def _clinic_with_an_upload() -> str:
    """An administrator, colleagues (one waiting for approval), a PACS destination and an
    upload delivered with one damaged and one skipped file; returns the upload's id."""
    from django.utils import timezone

    from accounts.models import Approval, Role, User
    from accounts.services.audit import audit_record
    from accounts.services.roles import user_role_access_apply
    from accounts.tests.factories import FacilityFactory, UserFactory
    from pacs.models import PacsDestination
    from uploads.models import FileKind, PacsStatus, Study, UploadFile, UploadSession

    clinic = FacilityFactory(name="Harbour Clinic", code="harbour")
    chief = User.objects.create_user(
        "ada", "ada@example.org", PASSWORD, role=Role.ADMIN, facility=clinic, full_name="Ada"
    )
    user_role_access_apply(user=chief, audit=False)
    UserFactory(username="colin", facility=clinic, role=Role.RADIOGRAPHER)
    UserFactory(username="newcomer", facility=clinic, approval=Approval.PENDING)
    PacsDestination.objects.create(
        name="Hospital PACS", dicomweb_url="https://pacs.example.org/dicom-web"
    )
    now = timezone.now()
    upload = UploadSession.objects.create(
        owner=chief,
        facility=clinic,
        state="completed",
        total_size=187_400_000,
        chunk_size=8 * 1024 * 1024,
        total_chunks=23,
        service_level="urgent",
        received_at=now - timedelta(minutes=2),
        completed_at=now,
        destination="Hospital PACS",
        receipt={
            "destinations": {
                "db:1": {
                    "name": "Hospital PACS",
                    "acknowledged": [],
                    "failed": {},
                    "confirmed_at": now.isoformat(),
                    "confirmed_instances": 148,
                }
            }
        },
    )
    files = [
        ("CT/IM0001.dcm", FileKind.DICOM, "", PacsStatus.STORED),
        (
            "CT/IM0149.dcm",
            FileKind.REJECTED,
            "The file is damaged: its DICOM data ends early.",
            PacsStatus.NOT_SENT,
        ),
        (
            "readme.txt",
            FileKind.SKIPPED,
            "Not a DICOM file or an image: skipped.",
            PacsStatus.NOT_SENT,
        ),
    ]
    for position, (name, kind, reason, pacs_status) in enumerate(files):
        UploadFile.objects.create(
            session=upload,
            position=position,
            name=name,
            size=1_260_000,
            offset=position * 1_260_000,
            kind=kind,
            reason=reason,
            pacs_status=pacs_status,
        )
    Study.objects.create(
        session=upload,
        study_instance_uid="1.2.826.0.1.3680043.9.1",
        study_date="20261201",
        study_description="CT head",
        modalities=["CT"],
        instances=148,
        pacs_state="received",
    )
    for action, detail in (
        ("data_import", {"phase": "started"}),
        ("data_import", {"phase": "received"}),
        (
            "instances_transferred",
            {"phase": "acknowledged", "destination": "Hospital PACS", "instances": 148},
        ),
        ("instances_transferred", {"phase": "confirmed"}),
    ):
        audit_record(
            action=action, user=chief, object_type="upload", object_id=str(upload.id), detail=detail
        )
    return str(upload.id)


def _browse(base: str, upload_id: str) -> None:
    """Sign in as the administrator, check and photograph the index and the upload page.

    Runs in a thread of its own: Playwright's sync API keeps an event loop running in the
    thread that starts it, where Django refuses database calls.
    """
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(base_url=base, viewport={"width": 1280, "height": 900})
            page.goto("/admin/")
            page.fill("#id_username", "ada")
            page.fill("#id_password", PASSWORD)
            expect(page.locator("select")).to_have_count(0)
            page.click("input[type=submit]")
            sections = page.locator("#content-main .module caption")
            expect(sections).to_have_text(
                [
                    "People",
                    "Uploads",
                    "PACS",
                    "Security",
                    "Audit",
                    "Reports",
                    "Notifications",
                    "Statistics",
                ]
            )
            expect(page.get_by_role("link", name="Pending approvals (1)")).to_be_visible()
            page.screenshot(path=str(SCREENSHOTS / "admin-index.png"), full_page=True)

            page.goto(f"/admin/uploads/uploadsession/{upload_id}/change/")
            expect(page.get_by_text("187.4 MB")).to_be_visible()
            expect(
                page.get_by_text("The file is damaged: its DICOM data ends early.")
            ).to_be_visible()
            expect(page.get_by_text("148 images listed by the PACS")).to_be_visible()
            # Delivered: neither retry nor cancel exists for it.
            expect(page.get_by_role("button", name="Retry sending to the PACS")).to_have_count(0)
            page.screenshot(path=str(SCREENSHOTS / "admin-upload.png"), full_page=True)
        finally:
            browser.close()


def test_an_administrator_sees_the_grouped_index_and_an_upload(live_server: Any) -> None:
    upload_id = _clinic_with_an_upload()
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(_browse, live_server.url, upload_id).result(timeout=BROWSER_TIMEOUT_SECONDS)
