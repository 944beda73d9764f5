"""Role × endpoint × whose upload: who may see and act on an upload.

clinician: own; radiographer: own facility's (the facility the upload was made at); admin:
all; radiologist and auditor: none. Anything the requester may not see is 404 (never 403),
so ids leak nothing; what they see but do not own, they may not write bytes into (403).
"""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.models import Role
from accounts.tests.factories import FacilityFactory, UserFactory
from uploads.models import UploadSession
from uploads.tokens import upload_token_issue

pytestmark = pytest.mark.django_db

OWNERS = ("own", "same_facility", "other_facility")

# Which uploads each role reaches, by owner.
VISIBLE: dict[str, set[str]] = {
    Role.CLINICIAN: {"own"},
    Role.RADIOGRAPHER: {"own", "same_facility"},
    Role.ADMIN: {"own", "same_facility", "other_facility"},
    Role.RADIOLOGIST: set(),
    Role.AUDITOR: set(),
}

# (method, path suffix) of every endpoint that serves one upload.
OBJECT_ENDPOINTS = [
    ("get", "/status"),
    ("delete", ""),
    ("post", "/complete"),
    ("post", "/confirm"),
    ("post", "/retry"),
    ("post", "/token"),
    ("put", "/chunk"),
]
# Endpoints that write an upload's bytes (or issue the token that does): owner only.
OWNER_ONLY = {"/token", "/chunk"}


def client_for(user: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(user).access_token}")
    return client


def make_upload(owner: Any) -> UploadSession:
    """An upload as upload_init makes it: made at the owner's facility of now."""
    return UploadSession.objects.create(
        owner=owner,
        facility=owner.facility,
        total_size=10,
        chunk_size=256 * 1024,
        total_chunks=1,
    )


@pytest.fixture
def world() -> dict[str, Any]:
    here, there = FacilityFactory(), FacilityFactory()
    requesters = {role: UserFactory(role=role, facility=here) for role in Role.values}
    colleague = UserFactory(role=Role.RADIOGRAPHER, facility=here)
    stranger = UserFactory(role=Role.CLINICIAN, facility=there)
    return {"here": here, "requesters": requesters, "colleague": colleague, "stranger": stranger}


def upload_of(world: dict[str, Any], role: str, owner: str) -> UploadSession:
    owner_user = {
        "own": world["requesters"][role],
        "same_facility": world["colleague"],
        "other_facility": world["stranger"],
    }[owner]
    return make_upload(owner_user)


@pytest.mark.parametrize("role", Role.values)
@pytest.mark.parametrize("owner", OWNERS)
@pytest.mark.parametrize(("method", "suffix"), OBJECT_ENDPOINTS)
def test_role_matrix_on_one_upload(world, role, owner, method, suffix):
    upload = upload_of(world, role, owner)
    client = client_for(world["requesters"][role])
    response = getattr(client, method)(f"/api/v1/upload/{upload.id}{suffix}")
    if owner in VISIBLE[role] and owner != "own" and suffix in OWNER_ONLY:
        # Seen but not the owner's: bytes and the tokens that send them are the owner's only.
        assert response.status_code == 403, response.content
        assert response.json()["error"]["code"] == "permission_denied"
    elif owner in VISIBLE[role]:
        # Allowed: whatever the state machine says (200, 202, 204, 409, 422), never 401/403/404.
        assert response.status_code not in (401, 403, 404), response.content
    else:
        assert response.status_code == 404, response.content
        assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("role", Role.values)
def test_role_matrix_on_the_upload_list(world, role):
    uploads = {owner: upload_of(world, role, owner) for owner in OWNERS}
    response = client_for(world["requesters"][role]).get("/api/v1/uploads")
    assert response.status_code == 200
    listed = {row["upload_id"] for row in response.json()["results"]}
    # Other tests' committed rows may also be listed for an admin: compare only ours.
    ours = {str(upload.id) for upload in uploads.values()}
    assert listed & ours == {str(uploads[owner].id) for owner in VISIBLE[role]}


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.CLINICIAN, True),
        (Role.RADIOGRAPHER, True),
        (Role.ADMIN, True),
        (Role.RADIOLOGIST, False),
        (Role.AUDITOR, False),
    ],
)
def test_only_uploading_roles_may_start_an_upload(world, role, allowed):
    response = client_for(world["requesters"][role]).post(
        "/api/v1/upload/init", {"files": [{"name": "a.dcm", "size": 10}]}, format="json"
    )
    if allowed:
        assert response.status_code == 201, response.content
    else:
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "permission_denied"


def test_radiographer_without_facility_sees_only_own_uploads(db):
    loner = UserFactory(role=Role.RADIOGRAPHER, facility=None)
    other = UserFactory(role=Role.RADIOGRAPHER, facility=None)
    mine, theirs = make_upload(loner), make_upload(other)
    client = client_for(loner)
    assert client.get(f"/api/v1/upload/{mine.id}/status").status_code == 200
    assert client.get(f"/api/v1/upload/{theirs.id}/status").status_code == 404


def test_upload_token_opens_its_own_upload_only(db):
    user = UserFactory(role=Role.ADMIN)
    first, second = make_upload(user), make_upload(user)
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Bearer {upload_token_issue(upload_id=first.id, user_id=user.id)}"
    )
    assert client.get(f"/api/v1/upload/{first.id}/status").status_code == 200
    assert client.get(f"/api/v1/upload/{second.id}/status").status_code == 404
    assert client.get("/api/v1/uploads").status_code == 403


def test_deactivated_user_is_refused(db):
    user = UserFactory(role=Role.ADMIN)
    upload = make_upload(user)
    client = client_for(user)
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert client.get(f"/api/v1/upload/{upload.id}/status").status_code == 401


def test_an_expired_or_tampered_upload_token_is_refused(db, settings):
    from datetime import timedelta

    user = UserFactory(role=Role.CLINICIAN)
    upload = make_upload(user)
    token = upload_token_issue(upload_id=upload.id, user_id=user.id)
    client = APIClient()
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tampered}")
    assert client.get(f"/api/v1/upload/{upload.id}/status").status_code == 401
    settings.UPLOAD_RESUME_WINDOW = timedelta(seconds=-1)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.get(f"/api/v1/upload/{upload.id}/status").status_code == 401


def test_the_upload_list_costs_the_same_queries_for_many_uploads(
    world, django_assert_max_num_queries
):
    radiographer = world["requesters"][Role.RADIOGRAPHER]
    for _ in range(20):
        make_upload(world["colleague"])
    client = client_for(radiographer)
    with django_assert_max_num_queries(4):
        response = client.get("/api/v1/uploads")
    assert response.json()["count"] == 20


def test_moving_people_between_clinics_does_not_move_their_upload_history(db):
    """Uploads stay with the clinic they were made at: the owner's move takes them
    neither away from that clinic's radiographers nor to the new clinic's."""
    here, there = FacilityFactory(), FacilityFactory()
    mover = UserFactory(role=Role.RADIOGRAPHER, facility=here)
    stays = UserFactory(role=Role.RADIOGRAPHER, facility=here)
    newcomer_colleague = UserFactory(role=Role.RADIOGRAPHER, facility=there)
    made_here = make_upload(mover)
    mover.facility = there
    mover.save(update_fields=["facility"])
    made_there = make_upload(mover)

    def status(user: Any, upload: UploadSession) -> int:
        return client_for(user).get(f"/api/v1/upload/{upload.id}/status").status_code

    assert status(stays, made_here) == 200
    assert status(newcomer_colleague, made_here) == 404
    assert status(newcomer_colleague, made_there) == 200
    assert status(stays, made_there) == 404
    assert status(mover, made_here) == 200 and status(mover, made_there) == 200  # their own
    listed = {r["upload_id"] for r in client_for(stays).get("/api/v1/uploads").json()["results"]}
    assert str(made_here.id) in listed and str(made_there.id) not in listed


def test_an_account_waiting_for_approval_reaches_no_colleagues_uploads(db):
    here = FacilityFactory()
    colleague_upload = make_upload(UserFactory(role=Role.RADIOGRAPHER, facility=here))
    waiting = UserFactory(role=Role.RADIOGRAPHER, facility=here, approval="pending")
    own = make_upload(waiting)
    client = client_for(waiting)
    assert client.get(f"/api/v1/upload/{colleague_upload.id}/status").status_code == 404
    assert client.get(f"/api/v1/upload/{own.id}/status").status_code == 200
