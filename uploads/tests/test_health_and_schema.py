import pytest

pytestmark = pytest.mark.django_db


def test_health_needs_no_token_and_reports_each_part(client, orthanc, settings):
    settings.PACS_DICOMWEB_URL = orthanc.dicomweb_url
    settings.PACS_ORTHANC_URL = orthanc.url
    settings.PACS_USERNAME, settings.PACS_PASSWORD = orthanc.auth
    response = client.get("/api/v1/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert {k: v["state"] for k, v in body["checks"].items() if k != "pacs"} == {
        "database": "ok",
        "broker": "ok",
        "storage": "ok",
    }
    assert body["checks"]["pacs"][0]["state"] == "ok"


def test_health_is_200_degraded_when_the_pacs_is_down(client, settings):
    settings.PACS_DICOMWEB_URL = "http://127.0.0.1:9/dicom-web"
    settings.PACS_ORTHANC_URL = ""
    response = client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"]["pacs"][0]["state"] == "degraded"


def test_health_is_503_when_storage_is_not_writable(client, settings, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    settings.UPLOAD_STORAGE_DIR = blocker / "uploads"
    response = client.get("/api/v1/health")
    assert response.status_code == 503
    assert response.json()["checks"]["storage"]["state"] == "failing"


def test_health_is_503_when_the_broker_is_down(client, settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:9/0"
    response = client.get("/api/v1/health")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["state"] == "failing"


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
