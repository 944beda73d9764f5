"""Web Push end to end, with the product as `serve` starts it (web processes, a real Celery
worker, its own VAPID key in DATA_DIR) and the stand-in push service: an upload finished
by the worker while no page is open reaches the device as a push it can decrypt, with the
screen to open and the unread count, and none of the study's patient data; a busy push
service is retried until the push is delivered; 410 deletes the subscription; signing
out deletes the device's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import dcmread

from uploads.tests.helpers import HttpUploader, sample_paths
from uploads.tests.product import RunningProduct, admin_access_token, manage, running_product

from .push_service import PushService, serve_push_service

pytestmark = pytest.mark.e2e

PASSWORD = "a long admin password"
URL = "/api/v1/notifications/push-subscriptions"
# The study's identifying attributes: not one of their values may be in a push.
PHI_KEYWORDS = [
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyDescription",
    "SeriesDescription",
    "AccessionNumber",
    "ReferringPhysicianName",
    "InstitutionName",
    "OtherPatientIDs",
]
NOTE = "Patient Jane Roe-Smith, known allergy"


@pytest.fixture(scope="module")
def pushing(
    tmp_path_factory: pytest.TempPathFactory, orthanc: Any
) -> Iterator[tuple[RunningProduct, PushService]]:
    service, server = serve_push_service()
    try:
        with running_product(
            tmp_path_factory.mktemp("push"),
            orthanc,
            WEB_WORKERS="1",
            WEB_PUSH_ALLOW_INSECURE_ENDPOINTS="true",
        ) as product:
            admin_access_token(product.base, product.env)  # the admin, as the README says
            yield product, service
    finally:
        server.shutdown()
        server.server_close()


def _login(product: RunningProduct) -> dict[str, str]:
    response = requests.post(
        f"{product.base}/api/v1/auth/login",
        json={"username": "admin", "password": PASSWORD},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def _subscribe(product: RunningProduct, service: PushService, access: str, name: str) -> None:
    headers = {"Authorization": f"Bearer {access}"}
    status = requests.get(f"{product.base}{URL}", headers=headers, timeout=30).json()
    assert status["enabled"] is True, status
    service.vapid_public_key = status["vapid_public_key"]
    response = requests.post(
        f"{product.base}{URL}", json=service.subscription(name), headers=headers, timeout=30
    )
    assert response.status_code == 201, response.text


def _upload(product: RunningProduct, access: str, path: Path) -> str:
    """Send a study and return at once, as a page that is then closed would."""
    uploader = HttpUploader(product.base, access, 1024 * 1024)
    upload = uploader.init([path], clinical_notes=NOTE)
    uploader.send(upload, [path])
    uploader.complete(upload)
    return str(upload["upload_id"])


def _phi_of(path: Path) -> list[str]:
    dataset = dcmread(path, stop_before_pixels=True)
    values = []
    for keyword in PHI_KEYWORDS:
        value = str(dataset.get(keyword, "") or "")
        values += [value, *value.split("^")]
    return [v for v in {*values, *NOTE.split(" ")} if len(v) >= 4]


@pytest.fixture(scope="module")
def device(pushing: tuple[RunningProduct, PushService]) -> dict[str, str]:
    product, service = pushing
    tokens = _login(product)
    _subscribe(product, service, tokens["access"], "phone")
    return tokens


def test_an_upload_completed_in_the_background_is_pushed_without_patient_data(
    pushing, device, orthanc_clean
):
    product, service = pushing
    path = sample_paths(["test_files/CT_small.dcm"])[0]
    upload_id = _upload(product, device["access"], path)
    [push] = [
        p for p in service.wait_for("phone", timeout=120) if p.payload["kind"] == "upload_completed"
    ]
    assert service.problems == []
    listed = requests.get(
        f"{product.base}/api/v1/notifications",
        headers={"Authorization": f"Bearer {device['access']}"},
        timeout=30,
    ).json()
    note = next(n for n in listed["results"] if n["kind"] == "upload_completed")
    assert push.payload == {
        "title": note["title"],
        "body": note["body"],
        "url": f"/#/study/{upload_id}",
        "tag": f"upload-{upload_id}",
        "unread": listed["unread_count"],
        "kind": "upload_completed",
        "seq": push.payload["seq"],
        "notification_id": note["id"],
    }
    assert push.payload["unread"] >= 1 and push.payload["seq"] > 0
    phi = _phi_of(path)
    assert "CompressedSamples" in phi and "Roe-Smith," in phi  # the test has something to find
    for value in phi:
        assert value.encode() not in push.plaintext, value
    assert push.headers["authorization"].startswith("vapid t=")
    assert push.claims["aud"] == service.base


def test_a_busy_push_service_is_retried_by_the_worker_until_delivered(
    pushing, device, orthanc_clean
):
    product, service = pushing
    before = len(service.pushes("phone"))
    service.answer("phone", 500, 429)
    upload_id = _upload(
        product, device["access"], sample_paths(["test_files/ExplVR_BigEnd.dcm"])[0]
    )
    delivered = service.wait_for("phone", count=before + 1, timeout=120)
    assert delivered[-1].payload["url"] == f"/#/study/{upload_id}"
    answered = [p.status for p in service.pushes("phone", status=None)]
    assert answered[-3:] == [500, 429, 201]
    assert service.problems == []


def test_a_subscription_the_push_service_says_is_gone_is_deleted(pushing, device, orthanc_clean):
    product, service = pushing
    service.answer("phone", 410)
    _upload(product, device["access"], sample_paths(["test_files/image_dfl.dcm"])[0])
    service.wait_for("phone", status=410, timeout=120)
    headers = {"Authorization": f"Bearer {device['access']}"}
    started = time.monotonic()
    while time.monotonic() - started < 60:
        if not requests.get(f"{product.base}{URL}", headers=headers, timeout=30).json()[
            "subscribed"
        ]:
            break
        time.sleep(0.3)
    else:
        raise AssertionError("the subscription was not deleted after 410")


def test_signing_out_deletes_the_devices_subscription(pushing):
    product, service = pushing
    laptop = _login(product)
    _subscribe(product, service, laptop["access"], "laptop")
    tablet = _login(product)
    _subscribe(product, service, tablet["access"], "tablet")
    out = requests.post(
        f"{product.base}/api/v1/auth/logout", json={"refresh": laptop["refresh"]}, timeout=30
    )
    assert out.status_code in (200, 204), out.text
    left = manage(
        product,
        "shell",
        "-c",
        "from notifications.models import PushSubscription\n"
        "print(sorted(s.endpoint for s in PushSubscription.objects.all()))",
    )
    assert service.endpoint("laptop") not in left and service.endpoint("tablet") in left
