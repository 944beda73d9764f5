import json
import threading

import pytest
from django.db import connection
from django.test import Client

from accounts.models import Role
from accounts.tests.factories import UserFactory
from pacs.models import PacsDestination
from pacs.tests.proxy import pacs_proxy
from uploads.tests.conftest import client_for

pytestmark = pytest.mark.django_db

# Requests an orchestrator, a monitor or a stranger could send within one probe interval.
ANONYMOUS_REQUESTS = 25


def admin_client():
    return client_for(UserFactory(role=Role.ADMIN))


def use_pacs(settings, url, orthanc):
    settings.PACS_DICOMWEB_URL = f"{url}/dicom-web"
    settings.PACS_ORTHANC_URL = ""
    settings.PACS_USERNAME, settings.PACS_PASSWORD = orthanc.auth


def test_anonymous_health_is_the_status_only(client, orthanc):
    orthanc.start()
    response = client.get("/api/v1/health")

    assert (response.status_code, response.json()) == (200, {"status": "ok"})


@pytest.mark.parametrize("who", ["radiographer", "bad token"])
def test_health_is_the_status_only_for_non_admins_and_bad_tokens(client, orthanc, who):
    orthanc.start()
    if who == "bad token":
        response = client.get("/api/v1/health", HTTP_AUTHORIZATION="Bearer not-a-token")
    else:
        response = client_for(UserFactory(role=Role.RADIOGRAPHER)).get("/api/v1/health")

    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_admins_get_each_part_with_sentences_naming_no_host_or_version(orthanc):
    orthanc.start()
    response = admin_client().get("/api/v1/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert {k: v["state"] for k, v in body["checks"].items() if k != "pacs"} == {
        "database": "ok",
        "broker": "ok",
        "storage": "ok",
    }
    [pacs] = body["checks"]["pacs"]
    assert (pacs["state"], pacs["detail"]) == ("ok", "The PACS answered a DICOMweb query.")
    text = json.dumps(body)
    assert "127.0.0.1" not in text and str(orthanc.server.http_port) not in text
    assert "Orthanc 1." not in text


def test_health_is_200_degraded_when_the_pacs_is_down(client, settings):
    settings.PACS_DICOMWEB_URL = "http://127.0.0.1:9/dicom-web"
    settings.PACS_ORTHANC_URL = ""

    anonymous = client.get("/api/v1/health")
    admin = admin_client().get("/api/v1/health")

    assert (anonymous.status_code, anonymous.json()) == (200, {"status": "degraded"})
    assert admin.status_code == 200
    [pacs] = admin.json()["checks"]["pacs"]
    assert pacs == {
        "name": settings.PACS_NAME,
        "state": "degraded",
        "detail": "The hospital PACS could not be reached.",
    }


def test_every_pacs_down_is_still_200_degraded(client, settings, orthanc):
    with pacs_proxy("http://127.0.0.1:9") as down:  # answers 502 to everything
        use_pacs(settings, down.url, orthanc)
        PacsDestination.objects.create(name="Backup", dicomweb_url="http://127.0.0.1:9/dw")

        response = client.get("/api/v1/health")

    assert (response.status_code, response.json()) == (200, {"status": "degraded"})


def test_anonymous_requests_probe_each_pacs_once_per_interval(client, settings, orthanc):
    orthanc.start()
    with (
        pacs_proxy(orthanc.url) as main,
        pacs_proxy(orthanc.url) as backup,
        pacs_proxy("http://127.0.0.1:9") as down,
    ):
        use_pacs(settings, main.url, orthanc)
        user, password = orthanc.auth
        for name, proxy in (("Backup", backup), ("Down", down)):
            PacsDestination.objects.create(
                name=name,
                dicomweb_url=f"{proxy.url}/dicom-web",
                username=user,
                password=password,
            )

        answers = [client.get("/api/v1/health") for _ in range(ANONYMOUS_REQUESTS)]

        assert {(a.status_code, a.json()["status"]) for a in answers} == {(200, "degraded")}
        assert (main.count(), backup.count(), down.count()) == (1, 1, 1)


@pytest.mark.django_db(transaction=True)
def test_concurrent_requests_share_one_probe(settings, orthanc):
    """Each thread has its own database connection, as each web process has: the probe
    is claimed in the database, not in a per-process cache."""
    orthanc.start()
    answers: list[int] = []
    start = threading.Barrier(8)

    def ask() -> None:
        try:
            start.wait(timeout=30)
            answers.append(Client().get("/api/v1/health").status_code)
        finally:
            connection.close()

    with pacs_proxy(orthanc.url) as proxy:
        use_pacs(settings, proxy.url, orthanc)
        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        assert (answers, proxy.count()) == ([200] * 8, 1)


def test_health_is_503_when_storage_is_not_writable(client, settings, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    settings.UPLOAD_STORAGE_DIR = blocker / "uploads"

    response = client.get("/api/v1/health")
    admin = admin_client().get("/api/v1/health")

    assert (response.status_code, response.json()) == (503, {"status": "failing"})
    assert admin.json()["checks"]["storage"]["state"] == "failing"


def test_health_is_503_when_the_broker_is_down(client, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:9/0"

    response = client.get("/api/v1/health")
    admin = admin_client().get("/api/v1/health")

    assert (response.status_code, response.json()) == (503, {"status": "failing"})
    assert admin.json()["checks"]["broker"]["state"] == "failing"


def test_openapi_schema_documents_every_upload_endpoint_and_its_errors(client):
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    expected = {
        "/api/v1/upload/init": ("post", {"201", "400", "401", "409", "413", "507"}),
        "/api/v1/upload/{upload_id}/chunk": ("put", {"200", "401", "404", "409", "422"}),
        "/api/v1/upload/{upload_id}/status": ("get", {"200", "401", "404"}),
        "/api/v1/upload/{upload_id}/complete": ("post", {"202", "409"}),
        "/api/v1/upload/{upload_id}/confirm": ("post", {"202", "409"}),
        "/api/v1/upload/{upload_id}/retry": ("post", {"202", "409"}),
        "/api/v1/upload/{upload_id}/token": ("post", {"200"}),
        "/api/v1/upload/{upload_id}": ("delete", {"204", "409"}),
        "/api/v1/uploads": ("get", {"200", "401"}),
        "/api/v1/auth/login": ("post", {"200", "401"}),
        "/api/v1/auth/refresh": ("post", {"200", "401"}),
        "/api/v1/auth/logout": ("post", {"204"}),
        "/api/v1/health": ("get", {"200", "503"}),
    }
    for path, (method, codes) in expected.items():
        assert path in paths, path
        assert codes <= set(paths[path][method]["responses"]), (
            path,
            paths[path][method]["responses"].keys(),
        )


def test_swagger_ui_is_served(client):
    assert client.get("/api/v1/docs/").status_code == 200
