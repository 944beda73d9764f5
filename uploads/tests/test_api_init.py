from typing import Any

import pytest

from uploads.models import UploadSession

pytestmark = pytest.mark.django_db

FILES = [{"name": "IMG0001.dcm", "size": 524288}, {"name": "IMG0002.dcm", "size": 600000}]


def init(api: Any, **body: Any) -> Any:
    return api.post("/api/v1/upload/init", {"files": FILES, **body}, format="json")


def test_init_returns_the_contract_fields(api):
    response = init(api, metadata={"patient_name": "Doe^Jane", "study_date": "2026-11-02"})
    assert response.status_code == 201, response.json()
    body = response.json()
    assert set(body) >= {
        "upload_id",
        "upload_token",
        "chunk_size",
        "total_size",
        "total_chunks",
        "expires_at",
    }
    assert body["chunk_size"] == 1024 * 1024
    assert body["total_size"] == 524288 + 600000
    assert body["total_chunks"] == 2
    session = UploadSession.objects.get(pk=body["upload_id"])
    assert session.metadata["study_date"] == "20261102"


@pytest.mark.parametrize(
    "files",
    [
        [],
        [{"name": "a.dcm"}],
        [{"name": "a.dcm", "size": -1}],
        [{"name": "a.dcm", "size": 1.5}],
        [{"name": "a.dcm", "size": "12"}],
        [{"size": 10}],
        [{"name": "", "size": 10}],
        "not a list",
    ],
)
def test_malformed_manifest_is_400_invalid_manifest(api, files):
    response = api.post("/api/v1/upload/init", {"files": files}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_manifest"
    assert error["message"] and error["hint"]


@pytest.mark.parametrize("chunk_size", [1024, 256 * 1024 - 1, 16 * 1024 * 1024 + 1, "big"])
def test_chunk_size_outside_range_is_refused_not_clamped(api, chunk_size):
    response = init(api, chunk_size=chunk_size)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_chunk_size"


def test_chunk_size_at_the_limits_is_accepted(api):
    assert init(api, chunk_size=256 * 1024).json()["total_chunks"] == 5
    assert init(api, chunk_size=16 * 1024 * 1024).json()["total_chunks"] == 1


def test_too_large_upload_is_413(api, settings):
    settings.UPLOAD_MAX_TOTAL_SIZE = 1_000_000
    response = init(api)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "upload_too_large"


def test_not_enough_disk_is_507(api, settings):
    settings.UPLOAD_DISK_RESERVE = 10**18
    response = init(api)
    assert response.status_code == 507
    assert response.json()["error"]["code"] == "insufficient_storage"


def test_possible_duplicate_is_409_until_forced(api):
    hints = {"patient_name": "Doe^Jane", "study_date": "20261102", "modality": "CT"}
    first = init(api, metadata=hints)
    assert first.status_code == 201
    again = init(api, metadata={**hints, "patient_name": "DOE JANE", "study_date": "2026-11-02"})
    assert again.status_code == 409
    error = again.json()["error"]
    assert error["code"] == "possible_duplicate"
    assert error["duplicate_of"] == first.json()["upload_id"]
    forced = init(api, metadata=hints, force_upload=True)
    assert forced.status_code == 201


def test_no_hints_means_no_duplicate_check(api):
    assert init(api).status_code == 201
    assert init(api).status_code == 201


def test_init_without_token_is_401(client):
    response = client.post("/api/v1/upload/init", {"files": FILES}, content_type="application/json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert "WWW-Authenticate" in response.headers


def test_upload_token_cannot_open_a_new_upload(api):
    token = init(api).json()["upload_token"]
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert init(api).status_code == 403


def test_the_users_upload_preferences_fill_what_init_leaves_out(api, user):
    user.default_chunk_size = 4 * 1024 * 1024
    user.default_service_level = "urgent"
    user.save(update_fields=["default_chunk_size", "default_service_level"])
    body = init(api).json()
    assert body["chunk_size"] == 4 * 1024 * 1024
    assert UploadSession.objects.get(pk=body["upload_id"]).service_level == "urgent"
    explicit = init(api, chunk_size=256 * 1024, service_level="stat").json()
    assert explicit["chunk_size"] == 256 * 1024
    assert UploadSession.objects.get(pk=explicit["upload_id"]).service_level == "stat"


def test_duplicate_detection_can_be_turned_off_by_the_user(api, user):
    hints = {"patient_name": "Doe^Jane", "study_date": "20261102", "modality": "CT"}
    assert init(api, metadata=hints).status_code == 201
    user.duplicate_detection = False
    user.save(update_fields=["duplicate_detection"])
    assert init(api, metadata=hints).status_code == 201


def test_a_colleagues_duplicate_is_reported_without_naming_their_upload(api, user):
    from accounts.models import Role
    from accounts.tests.factories import UserFactory
    from uploads.tests.conftest import client_for

    hints = {"patient_name": "Doe^Jane", "study_date": "20261102", "modality": "CT"}
    assert init(api, metadata=hints).status_code == 201
    colleague = UserFactory(facility=user.facility, role=Role.CLINICIAN)
    response = init(client_for(colleague), metadata=hints)
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "possible_duplicate" and error["duplicate_uploaded_at"]
    assert "duplicate_of" not in error  # a clinician may not open a colleague's upload


def test_an_account_waiting_for_approval_is_refused_with_403_and_a_sentence(api, user):
    user.approval = "pending"
    user.save(update_fields=["approval"])
    response = init(api)
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "account_pending_approval"
    assert error["message"] == (
        "Your account is waiting for an administrator's approval, so it cannot send studies yet."
    )
    assert "administrator" in error["hint"]
    assert not UploadSession.objects.filter(owner=user).exists()


def test_init_records_the_owners_facility_and_keeps_it_when_the_owner_moves(api, user):
    from accounts.tests.factories import FacilityFactory

    first = init(api).json()["upload_id"]
    clinic = user.facility
    user.facility = FacilityFactory()
    user.save(update_fields=["facility"])
    second = init(api).json()["upload_id"]
    assert UploadSession.objects.get(pk=first).facility == clinic
    assert UploadSession.objects.get(pk=second).facility == user.facility


def test_a_duplicate_is_looked_for_among_the_clinics_uploads_not_the_owners_clinic(api, user):
    from accounts.models import Role
    from accounts.tests.factories import UserFactory
    from uploads.tests.conftest import client_for

    hints = {"patient_name": "Doe^Jane", "study_date": "20261102", "modality": "CT"}
    assert init(api, metadata=hints).status_code == 201
    clinic = user.facility
    colleague = UserFactory(facility=clinic, role=Role.RADIOGRAPHER)
    user.facility = None  # the first uploader moved away: the study was still sent from here
    user.save(update_fields=["facility"])
    response = init(client_for(colleague), metadata=hints)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "possible_duplicate"
