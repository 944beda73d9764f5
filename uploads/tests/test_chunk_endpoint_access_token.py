"""Chunks sent with the owner's access token (the API allows either token) are served by
the lean endpoint, not by Django's request path, with the DRF view's checks and answers:
the token's session and account are checked (at most every UPLOAD_TOKEN_RECHECK_SECONDS,
as an upload token's), a colleague who may follow
the upload may not write into it, and what is not a valid access token still goes to
Django."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import pytest
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from accounts.models import Role
from accounts.tests.factories import FacilityFactory, UserFactory
from uploads.models import UploadChunk
from uploads.tests.helpers import content_md5
from uploads.tests.test_chunk_endpoint import CHUNK, asgi_put, drf_put, init, signed_in

pytestmark = pytest.mark.django_db(transaction=True)

EXPIRING_SECONDS = 4


def access_of(client: APIClient) -> str:
    return str(client._credentials["HTTP_AUTHORIZATION"])  # noqa: SLF001


def chunk_headers(authorization: str, data: bytes) -> dict[str, str]:
    return {"Authorization": authorization, "Content-MD5": content_md5(data)}


def test_a_chunk_sent_with_the_access_token_is_stored_without_django(
    drf_authenticated: list[str],
) -> None:
    owner = UserFactory(role=Role.CLINICIAN)
    client = signed_in(owner)
    upload = init(client)
    data = os.urandom(CHUNK)
    path = f"/api/v1/upload/{upload['upload_id']}/chunk?index=0"
    status, headers, body = asgi_put(path, data, chunk_headers(access_of(client), data))
    assert (status, body) == (200, {"index": 0, "received": True, "bytes_received": CHUNK})
    assert headers["x-content-type-options"] == "nosniff"
    assert UploadChunk.objects.get(session_id=upload["upload_id"], index=0).stored
    assert drf_authenticated == []
    # The same PUT through Django's request path is recorded: the fixture sees DRF.
    assert drf_put(upload, "?index=0", data, chunk_headers(access_of(client), data))[0] == 200
    assert drf_authenticated and set(drf_authenticated) == {path.partition("?")[0]}
    drf_authenticated.clear()
    # A refresh token is no access token: Django refuses it, as before.
    refresh = f"Bearer {RefreshToken.for_user(owner)}"
    status, _, body = asgi_put(path, data, chunk_headers(refresh, data))
    assert status == 401 and body["error"]["code"] == "authentication_failed"
    assert drf_authenticated  # Django's answer
    # The scheme as simplejwt reads it: "bearer" (lower case) is no JWT header there, so
    # the endpoint leaves it to Django too, which answers that nobody signed in.
    drf_authenticated.clear()
    lower = chunk_headers("bearer " + access_of(client).partition(" ")[2], data)
    status, _, body = asgi_put(path, data, lower)
    assert (status, body) == drf_put(upload, "?index=0", data, lower)
    assert status == 401 and body["error"]["code"] == "not_authenticated"
    assert drf_authenticated


def test_the_access_token_ends_with_its_session(drf_authenticated: list[str]) -> None:
    """With UPLOAD_TOKEN_RECHECK_SECONDS at 0 (the test settings), at once."""
    owner = UserFactory(role=Role.CLINICIAN)
    client = signed_in(owner)
    upload = init(client)
    data = os.urandom(CHUNK)
    path = f"/api/v1/upload/{upload['upload_id']}/chunk?index="
    headers = chunk_headers(access_of(client), data)
    assert asgi_put(path + "0", data, headers)[0] == 200
    assert client.post("/api/v1/auth/sessions/revoke-all", {}, format="json").status_code in (
        200,
        204,
    )
    status, response_headers, body = asgi_put(path + "1", data, headers)
    assert drf_authenticated == []  # the endpoint refused it itself
    assert (status, body) == drf_put(upload, "?index=1", data, headers)
    assert status == 401 and body["error"]["code"] == "authentication_failed"
    assert response_headers["www-authenticate"].startswith("Bearer")
    assert not UploadChunk.objects.filter(session_id=upload["upload_id"], index=1).exists()


def test_a_verified_access_token_is_trusted_for_the_recheck_time_then_checked_again(
    settings: Any, monkeypatch: pytest.MonkeyPatch, drf_authenticated: list[str]
) -> None:
    """As an upload token: its session and account are checked at most every
    UPLOAD_TOKEN_RECHECK_SECONDS; its signature and expiry on every chunk."""
    from uploads.services import chunks

    settings.UPLOAD_TOKEN_RECHECK_SECONDS = 10
    monkeypatch.setattr(chunks, "_verified", {})
    clock = [1000.0]
    monkeypatch.setattr(chunks.time, "monotonic", lambda: clock[0])
    owner = UserFactory(role=Role.CLINICIAN)
    client = signed_in(owner)
    upload = init(client)
    data = os.urandom(CHUNK)
    path = f"/api/v1/upload/{upload['upload_id']}/chunk?index=0"
    headers = chunk_headers(access_of(client), data)
    # The same token (same id and session) re-signed to expire in a few seconds: long
    # enough for the chunks below on a busy machine, then waited out.
    short = AccessToken(access_of(client).partition(" ")[2])  # type: ignore[arg-type]
    short.set_exp(lifetime=timedelta(seconds=EXPIRING_SECONDS))
    expiring = chunk_headers(f"Bearer {short}", data)
    assert asgi_put(path, data, expiring)[0] == 200
    assert asgi_put(path, data, headers)[0] == 200
    assert list(chunks._verified) == [f"jwt:{short['jti']}"]  # one entry for the token's id
    # While the token is trusted: a tampered signature is still refused (Django refuses
    # it), and so is the same token once it has expired.
    tampered = chunk_headers(access_of(client)[:-2] + "xx", data)
    assert asgi_put(path, data, tampered)[0] == 401
    time.sleep(max(0.0, short["exp"] - time.time()) + 1.1)  # exp has whole seconds
    status, _, body = asgi_put(path, data, expiring)
    assert status == 401 and body["error"]["code"] == "authentication_failed"
    client.post("/api/v1/auth/sessions/revoke-all", {}, format="json")
    clock[0] += 9  # within the recheck time: the token is still trusted
    assert asgi_put(path, data, headers)[0] == 200
    clock[0] += 2  # past it: the revoked session ends the token
    status, _, body = asgi_put(path, data, headers)
    assert status == 401 and body["error"]["code"] == "authentication_failed"
    # Only the tampered and the expired token went to Django (and were refused there).
    assert drf_authenticated == [path.partition("?")[0]] * 2


def test_an_account_switched_off_sends_nothing(drf_authenticated: list[str]) -> None:
    owner = UserFactory(role=Role.CLINICIAN)
    client = signed_in(owner)
    upload = init(client)
    owner.is_active = False
    owner.save(update_fields=["is_active"])
    data = os.urandom(CHUNK)
    headers = chunk_headers(access_of(client), data)
    status, _, body = asgi_put(f"/api/v1/upload/{upload['upload_id']}/chunk?index=0", data, headers)
    assert drf_authenticated == []  # refused by the endpoint itself
    assert (status, body) == drf_put(upload, "?index=0", data, headers)
    assert status == 401 and body["error"]["code"] == "authentication_failed"
    assert not UploadChunk.objects.filter(session_id=upload["upload_id"]).exists()


def test_colleagues_who_follow_the_upload_cannot_write_into_it(
    drf_authenticated: list[str],
) -> None:
    facility = FacilityFactory()
    owner = UserFactory(role=Role.RADIOGRAPHER, facility=facility)
    upload = init(signed_in(owner))
    data = os.urandom(CHUNK)
    path = f"/api/v1/upload/{upload['upload_id']}/chunk?index=0"
    colleague = signed_in(UserFactory(role=Role.RADIOGRAPHER, facility=facility))
    admin = signed_in(UserFactory(role=Role.ADMIN, facility=None))
    elsewhere = signed_in(UserFactory(role=Role.RADIOGRAPHER, facility=FacilityFactory()))
    for other, code in ((colleague, 403), (admin, 403), (elsewhere, 404)):
        assert other.get(f"/api/v1/upload/{upload['upload_id']}/status").status_code == (
            200 if code == 403 else 404
        )
        headers = chunk_headers(access_of(other), data)
        drf_authenticated.clear()
        status, _, body = asgi_put(path, data, headers)
        assert drf_authenticated == []  # refused by the endpoint itself
        assert (status, body) == drf_put(upload, "?index=0", data, headers)
        assert status == code
        assert body["error"]["code"] == ("permission_denied" if code == 403 else "not_found")
    assert not UploadChunk.objects.filter(session_id=upload["upload_id"]).exists()
