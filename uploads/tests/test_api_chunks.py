"""Chunk upload, resume and the upload token, over the API (no worker needed)."""

import os
from typing import Any

import pytest

from uploads import storage
from uploads.models import UploadChunk
from uploads.tests.helpers import content_md5

pytestmark = pytest.mark.django_db

CHUNK = 256 * 1024


@pytest.fixture
def payload() -> bytes:
    return os.urandom(CHUNK * 3 + 1000)


@pytest.fixture
def upload(api, payload) -> dict[str, Any]:
    body = {
        "files": [
            {"name": "a.dcm", "size": CHUNK + 10},
            {"name": "b.dcm", "size": len(payload) - CHUNK - 10},
        ],
        "chunk_size": CHUNK,
    }
    response = api.post("/api/v1/upload/init", body, format="json")
    assert response.status_code == 201
    return response.json()


def put(client, upload, index, data, md5=None, token=None):
    headers = {"HTTP_CONTENT_MD5": md5 if md5 is not None else content_md5(data)}
    if token:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client.put(
        f"/api/v1/upload/{upload['upload_id']}/chunk?index={index}",
        data=data,
        content_type="application/octet-stream",
        **headers,
    )


def chunk(payload, index):
    return payload[index * CHUNK : (index + 1) * CHUNK]


def test_chunks_in_any_order_assemble_into_the_stream(api, upload, payload):
    for index in (3, 1, 0, 2):
        response = put(api, upload, index, chunk(payload, index), token=upload["upload_token"])
        assert response.status_code == 200, response.json()
        assert response.json()["index"] == index and response.json()["received"] is True
    assert response.json()["bytes_received"] == len(payload)
    with storage.open_range(upload_id=upload["upload_id"], offset=0, size=len(payload)) as stream:
        assert stream.read() == payload


def test_duplicate_chunk_is_accepted_once(api, upload, payload):
    for _ in range(2):
        response = put(api, upload, 0, chunk(payload, 0))
        assert response.status_code == 200
        assert response.json()["bytes_received"] == CHUNK
    assert UploadChunk.objects.filter(session_id=upload["upload_id"]).count() == 1
    assert UploadChunk.objects.get(session_id=upload["upload_id"], index=0).times_received == 2


def test_different_bytes_for_a_stored_chunk_is_409_and_keeps_the_first(api, upload, payload):
    assert put(api, upload, 0, chunk(payload, 0)).status_code == 200
    response = put(api, upload, 0, os.urandom(CHUNK))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "chunk_conflict"
    with storage.open_range(upload_id=upload["upload_id"], offset=0, size=CHUNK) as stream:
        assert stream.read() == chunk(payload, 0)


def test_bad_md5_is_422_and_stores_nothing(api, upload, payload):
    response = put(api, upload, 1, chunk(payload, 1), md5=content_md5(b"other"))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "checksum_mismatch"
    assert not UploadChunk.objects.filter(session_id=upload["upload_id"]).exists()
    # The chunk can still be sent correctly afterwards.
    assert put(api, upload, 1, chunk(payload, 1)).status_code == 200


def test_missing_md5_is_refused(api, upload, payload):
    response = put(api, upload, 0, chunk(payload, 0), md5="")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "checksum_required"


def test_index_out_of_range_is_422(api, upload, payload):
    for index in ("4", "-1", "x"):
        response = api.put(
            f"/api/v1/upload/{upload['upload_id']}/chunk?index={index}",
            data=b"x",
            content_type="application/octet-stream",
            HTTP_CONTENT_MD5=content_md5(b"x"),
        )
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "chunk_out_of_range"


def test_wrong_length_is_422(api, upload, payload):
    short = chunk(payload, 0)[:-1]
    response = put(api, upload, 0, short)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "chunk_size_mismatch"
    last = payload[3 * CHUNK :] + b"extra"
    assert put(api, upload, 3, last).json()["error"]["code"] == "chunk_size_mismatch"


def test_status_lists_missing_chunks_for_resume(api, upload, payload):
    put(api, upload, 0, chunk(payload, 0))
    put(api, upload, 2, chunk(payload, 2))
    status = api.get(f"/api/v1/upload/{upload['upload_id']}/status").json()
    assert status["state"] == "receiving"
    assert status["missing_chunks"] == [1, 3]
    assert status["bytes_received"] == 2 * CHUNK
    assert status["total_size"] == len(payload)
    for key in (
        "studies",
        "pacs",
        "rejected_files",
        "skipped_files",
        "warnings",
        "error",
        "expires_at",
    ):
        assert key in status


def test_complete_with_missing_chunks_is_409_listing_them(api, upload, payload):
    put(api, upload, 0, chunk(payload, 0))
    response = api.post(f"/api/v1/upload/{upload['upload_id']}/complete")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "upload_incomplete"
    assert error["missing_chunks"] == [1, 2, 3]


def test_complete_twice_is_harmless(api, upload, payload):
    for index in range(4):
        put(api, upload, index, chunk(payload, index))
    first = api.post(f"/api/v1/upload/{upload['upload_id']}/complete")
    second = api.post(f"/api/v1/upload/{upload['upload_id']}/complete")
    assert first.status_code == second.status_code == 202
    assert first.json()["state"] == "processing"
    assert put(api, upload, 0, chunk(payload, 0)).json()["error"]["code"] == "upload_not_receiving"


def test_another_users_upload_is_404(other_api, upload, payload):
    assert put(other_api, upload, 0, chunk(payload, 0)).status_code == 404
    assert other_api.get(f"/api/v1/upload/{upload['upload_id']}/status").status_code == 404
    assert other_api.delete(f"/api/v1/upload/{upload['upload_id']}").status_code == 404


def test_unknown_upload_is_404(api):
    response = api.get("/api/v1/upload/00000000-0000-0000-0000-000000000000/status")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_no_token_or_bad_token_is_401(client, upload, payload):
    url = f"/api/v1/upload/{upload['upload_id']}/chunk?index=0"
    response = client.put(url, data=chunk(payload, 0), content_type="application/octet-stream")
    assert response.status_code == 401
    response = client.put(
        url,
        data=chunk(payload, 0),
        content_type="application/octet-stream",
        HTTP_AUTHORIZATION="Bearer upl_forged",
        HTTP_CONTENT_MD5=content_md5(chunk(payload, 0)),
    )
    assert response.status_code == 401


def test_upload_token_opens_only_its_own_upload(client, api, upload, payload):
    other = api.post(
        "/api/v1/upload/init", {"files": [{"name": "c.dcm", "size": 10}]}, format="json"
    ).json()
    token = upload["upload_token"]
    assert put(client, other, 0, b"0123456789", token=token).status_code == 404
    assert put(client, upload, 0, chunk(payload, 0), token=token).status_code == 200
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert client.get(f"/api/v1/upload/{upload['upload_id']}/status", **auth).status_code == 200
    assert client.get(f"/api/v1/upload/{other['upload_id']}/status", **auth).status_code == 404
    assert client.get("/api/v1/uploads", **auth).status_code == 403


def test_owner_can_get_a_fresh_upload_token(api, client, upload, payload):
    token = api.post(f"/api/v1/upload/{upload['upload_id']}/token").json()["upload_token"]
    assert token != upload["upload_token"] or token
    assert put(client, upload, 0, chunk(payload, 0), token=token).status_code == 200


def test_an_administrator_or_a_colleague_follows_an_upload_but_cannot_send_its_chunks(
    user, api, client, upload, payload
):
    from accounts.models import Role
    from accounts.tests.factories import UserFactory
    from uploads.tests.conftest import client_for

    admin = client_for(UserFactory(role=Role.ADMIN, facility=None))
    colleague = client_for(UserFactory(role=Role.RADIOGRAPHER, facility=user.facility))
    base = f"/api/v1/upload/{upload['upload_id']}"
    for other in (admin, colleague):
        assert other.get(f"{base}/status").status_code == 200  # reading stays fine
        response = put(other, upload, 0, chunk(payload, 0))
        assert response.status_code == 403
        error = response.json()["error"]
        assert error["code"] == "permission_denied"
        assert error["message"] == "Only the person who started this upload can send its files."
        # Nor can they get an upload token to send chunks with.
        response = other.post(f"{base}/token")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "permission_denied"
        assert "Only the person who started this upload" in response.json()["error"]["message"]
    assert not UploadChunk.objects.filter(session_id=upload["upload_id"]).exists()
    # The owner sends them, with the access token as with the upload token.
    assert put(api, upload, 0, chunk(payload, 0)).status_code == 200
    assert put(client, upload, 1, chunk(payload, 1), token=upload["upload_token"]).status_code == (
        200
    )


def test_cancel_deletes_files(api, upload, payload, django_capture_on_commit_callbacks):
    assert storage.stream_exists(upload_id=upload["upload_id"])
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/v1/upload/{upload['upload_id']}").status_code == 204
    assert not storage.stream_exists(upload_id=upload["upload_id"])
    assert api.delete(f"/api/v1/upload/{upload['upload_id']}").status_code == 204
    status = api.get(f"/api/v1/upload/{upload['upload_id']}/status").json()
    assert status["state"] == "cancelled"


def test_list_is_newest_first_and_filters_by_state(api, upload):
    second = api.post(
        "/api/v1/upload/init", {"files": [{"name": "c.dcm", "size": 10}]}, format="json"
    ).json()
    api.delete(f"/api/v1/upload/{second['upload_id']}")
    listing = api.get("/api/v1/uploads").json()
    assert [u["upload_id"] for u in listing["results"]] == [
        second["upload_id"],
        upload["upload_id"],
    ]
    receiving = api.get("/api/v1/uploads?state=receiving").json()
    assert [u["upload_id"] for u in receiving["results"]] == [upload["upload_id"]]
