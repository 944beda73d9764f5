"""The lean ASGI chunk endpoint answers exactly as the DRF chunk view, and upload tokens
end with their sign-in session and act only for the user who asked for them."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import pytest
from django.db import connections
from rest_framework.test import APIClient

from accounts.models import Role
from accounts.tests.factories import FacilityFactory, UserFactory
from accounts.tests.helpers import PASSWORD
from relaypacs.asgi import application
from uploads.models import UploadChunk, UploadSession
from uploads.tests.helpers import content_md5
from uploads.tokens import upload_token_issue

# The endpoint's threads use their own connections: the data must be committed.
pytestmark = pytest.mark.django_db(transaction=True)

CHUNK = 256 * 1024
SIZE = CHUNK * 2 + 1000


def asgi_put(
    path: str, body: bytes, headers: dict[str, str], until: Any = None
) -> tuple[int, dict[str, str], Any]:
    """One request through the ASGI application as uvicorn hands it over (body in pieces);
    with ``until`` (a callable), the request's task is cancelled once ``until()`` is true."""
    import json

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": path.partition("?")[0],
        "raw_path": path.partition("?")[0].encode(),
        "query_string": path.partition("?")[2].encode(),
        "root_path": "",
        "headers": [
            (k.lower().encode(), v.encode())
            for k, v in {"Host": "testserver", "Content-Length": str(len(body)), **headers}.items()
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)] or [b""]
    messages = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Future()  # the client stays connected until the response is sent
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def _cancelled(condition: Any) -> None:
        task = asyncio.ensure_future(application(scope, receive, send))
        while not condition():
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(application(scope, receive, send) if until is None else _cancelled(until))
    if until is not None:
        return 0, {}, None
    start = sent[0]
    response_headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    content = b"".join(m.get("body", b"") for m in sent[1:])
    is_json = response_headers.get("content-type", "").startswith("application/json")
    return start["status"], response_headers, json.loads(content) if is_json else content


def signed_in(user: Any) -> APIClient:
    """A client signed in through the login API, so that its access token has a session."""
    client = APIClient()
    tokens = client.post(
        "/api/v1/auth/login", {"username": user.username, "password": PASSWORD}, format="json"
    ).json()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    return client


def init(client: APIClient) -> dict[str, Any]:
    body = {
        "files": [
            {"name": "a.dcm", "size": CHUNK + 10},
            {"name": "b.dcm", "size": SIZE - CHUNK - 10},
        ],
        "chunk_size": CHUNK,
    }
    response = client.post("/api/v1/upload/init", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def upload_with_chunk(user: Any) -> tuple[dict[str, Any], bytes, dict[str, str], str]:
    """A signed-in user's new upload, a random first chunk, the upload-token headers that
    send it, and the chunk path without its index."""
    upload = init(signed_in(user))
    data = os.urandom(CHUNK)
    headers = {
        "Authorization": f"Bearer {upload['upload_token']}",
        "Content-MD5": content_md5(data),
    }
    return upload, data, headers, f"/api/v1/upload/{upload['upload_id']}/chunk?index="


@pytest.fixture
def uploader() -> Any:
    return UserFactory(role=Role.CLINICIAN)


def drf_put(upload: dict[str, Any], query: str, body: bytes, headers: dict[str, str]) -> Any:
    client = APIClient()
    meta = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()}
    response = client.put(
        f"/api/v1/upload/{upload['upload_id']}/chunk{query}",
        data=body,
        content_type="application/octet-stream",
        **meta,
    )
    return response.status_code, response.json()


@pytest.mark.parametrize("credential", ["upload token", "access token"])
def test_the_lean_endpoint_answers_every_case_as_the_drf_view(
    uploader, credential, drf_authenticated
):
    client = signed_in(uploader)
    via_drf, via_asgi = init(client), init(client)
    payload = os.urandom(SIZE)
    first, last = payload[:CHUNK], payload[2 * CHUNK :]
    access = client._credentials["HTTP_AUTHORIZATION"].partition(" ")[2]  # noqa: SLF001
    # Another clinician's access token: the upload is not theirs to see (404).
    strangers = signed_in(UserFactory(role=Role.CLINICIAN))._credentials  # noqa: SLF001
    stranger = strangers["HTTP_AUTHORIZATION"].partition(" ")[2]

    def both(
        query: str,
        body: bytes,
        headers: dict[str, str],
        token_of: str = "self",
        scheme: str = "Bearer",
    ) -> Any:
        def token(upload: dict[str, Any]) -> str:
            own = upload["upload_token"] if credential == "upload token" else access
            if token_of == "other":  # the other upload's token, or a stranger's sign-in
                if credential == "access token":
                    return stranger
                return (via_asgi if upload is via_drf else via_drf)["upload_token"]
            if token_of == "tampered":
                return own[:-2] + "xx"
            return own

        drf = drf_put(
            via_drf, query, body, {"Authorization": f"{scheme} {token(via_drf)}", **headers}
        )
        drf_authenticated.clear()
        status, response_headers, asgi = asgi_put(
            f"/api/v1/upload/{via_asgi['upload_id']}/chunk{query}",
            body,
            {"Authorization": f"{scheme} {token(via_asgi)}", **headers},
        )
        assert (status, asgi) == drf, query
        # Served (or refused) by the endpoint itself, except what is no valid access token.
        jwt_refused = credential == "access token" and (
            token_of == "tampered" or scheme != "Bearer"
        )
        assert bool(drf_authenticated) == jwt_refused, (query, token_of, scheme)
        assert response_headers["x-content-type-options"] == "nosniff"
        return status, asgi, response_headers

    md5 = {"Content-MD5": content_md5(first)}
    status, body, _ = both("?index=0", first, md5)
    assert (status, body) == (200, {"index": 0, "received": True, "bytes_received": CHUNK})
    assert both("?index=0", first, md5)[:2] == (200, body)  # a retry is harmless
    assert both("?index=2", last, {"Content-MD5": content_md5(last)})[1]["bytes_received"] == (
        CHUNK + len(last)
    )
    wrong = {"Content-MD5": content_md5(b"other bytes")}
    assert both("?index=1", payload[CHUNK : 2 * CHUNK], wrong)[1]["error"]["code"] == (
        "checksum_mismatch"
    )
    assert both("?index=1", payload[CHUNK : 2 * CHUNK], {})[1]["error"]["code"] == (
        "checksum_required"
    )
    assert both("", first, md5)[:2][0] == 422
    assert both("?index=9", first, md5)[1]["error"]["code"] == "chunk_out_of_range"
    assert both("?index=1", first[:100], {"Content-MD5": content_md5(first[:100])})[1]["error"][
        "code"
    ] == ("chunk_size_mismatch")
    changed = os.urandom(CHUNK)
    assert both("?index=0", changed, {"Content-MD5": content_md5(changed)})[1]["error"]["code"] == (
        "chunk_conflict"
    )
    assert both("?index=1", first, md5, token_of="other")[0] == 404
    status, body, headers = both("?index=1", first, md5, token_of="tampered")
    assert status == 401 and body["error"]["code"] == "authentication_failed"
    assert headers["www-authenticate"].startswith("Bearer")
    # A repeated index: the last one counts, as in Django's QueryDict.
    middle = payload[CHUNK : 2 * CHUNK]
    status, body, _ = both("?index=0&index=1", middle, {"Content-MD5": content_md5(middle)})
    assert (status, body["index"], body["bytes_received"]) == (200, 1, SIZE)
    # Each upload counted each stored chunk once, whatever arrived twice.
    for upload in (via_drf, via_asgi):
        session = UploadSession.objects.get(pk=upload["upload_id"])
        assert UploadChunk.objects.get(session=session, index=0).times_received == 3
        assert session.last_chunk_at is not None
    # The scheme in lower case: an upload token's is read in any case, a JWT's only as
    # simplejwt spells it (AUTH_HEADER_TYPES), so that DRF answers nobody signed in.
    status, body, _ = both("?index=0", first, md5, scheme="bearer")
    if credential == "upload token":
        assert (status, body["index"]) == (200, 0)
    else:
        assert status == 401 and body["error"]["code"] == "not_authenticated"
    # A path the DRF route does not match is not served by the endpoint either.
    status, _, _ = asgi_put(
        f"/api/v1/upload/{via_asgi['upload_id']}/chunk\n?index=0",
        first,
        {"Authorization": f"Bearer {via_asgi['upload_token']}", **md5},
    )
    assert status == 404


def test_requests_the_endpoint_does_not_serve_reach_django(uploader, settings):
    settings.ALLOWED_HOSTS = ["testserver"]
    client = signed_in(uploader)
    upload = init(client)
    data = os.urandom(CHUNK)
    access = client._credentials["HTTP_AUTHORIZATION"]  # noqa: SLF001
    # A chunk sent with the access token is served by the endpoint (test_chunk_endpoint_
    # access_token.py checks that it does not reach Django).
    status, _, body = asgi_put(
        f"/api/v1/upload/{upload['upload_id']}/chunk?index=0",
        data,
        {"Authorization": access, "Content-MD5": content_md5(data)},
    )
    assert (status, body) == (200, {"index": 0, "received": True, "bytes_received": CHUNK})
    # A host that is not allowed gets Django's refusal, not a stored chunk.
    status, _, _ = asgi_put(
        f"/api/v1/upload/{upload['upload_id']}/chunk?index=1",
        data,
        {
            "Authorization": f"Bearer {upload['upload_token']}",
            "Content-MD5": content_md5(data),
            "Host": "evil.example",
        },
    )
    assert status == 400
    assert not UploadChunk.objects.filter(session_id=upload["upload_id"], index=1).exists()


def test_django_gets_no_body_of_a_chunk_put_the_endpoint_passes_on(uploader, settings, monkeypatch):
    """Its handler would read a whole body before refusing the request (401, 400): it gets
    an empty one, and the body is dropped as it arrives."""
    from django.core.handlers.asgi import ASGIHandler

    settings.ALLOWED_HOSTS = ["testserver"]
    read: list[int] = []
    read_body = ASGIHandler.read_body

    async def recorded(self: Any, receive: Any) -> Any:
        body = await read_body(self, receive)
        read.append(len(body.read()))
        body.seek(0)
        return body

    monkeypatch.setattr(ASGIHandler, "read_body", recorded)
    upload, data, headers, path = upload_with_chunk(uploader)
    refresh_like = {**headers, "Authorization": "Bearer not-a-token"}
    status, _, body = asgi_put(path + "0", data, refresh_like)
    assert status == 401 and body["error"]["code"] == "authentication_failed"
    status, _, _ = asgi_put(path + "0", data, {**headers, "Host": "evil.example"})
    assert status == 400
    assert read == [0, 0]
    # A request Django serves (not a chunk PUT) still gets its body.
    status, _, _ = asgi_put(f"/api/v1/upload/{upload['upload_id']}/complete", b"{}", headers)
    assert read[-1] == 2 and len(read) == 3
    assert not UploadChunk.objects.filter(session_id=upload["upload_id"]).exists()


def test_the_endpoint_closes_its_connection_in_tests_and_keeps_it_in_production(
    uploader, settings, monkeypatch
):
    from concurrent.futures import ThreadPoolExecutor

    from uploads import chunk_endpoint

    upload, data, headers, path = upload_with_chunk(uploader)
    path += "0"
    single = ThreadPoolExecutor(max_workers=1)  # one thread: its connection is the one used
    monkeypatch.setattr(chunk_endpoint, "_executor", single)

    def connection_of_worker() -> Any:
        return single.submit(lambda: connections["default"].connection).result()

    try:
        settings.CHUNK_DB_CONN_MAX_AGE = 0
        assert asgi_put(path, data, headers)[0] == 200
        assert connection_of_worker() is None
        settings.CHUNK_DB_CONN_MAX_AGE = 300
        assert asgi_put(path, data, headers)[0] == 200
        kept = connection_of_worker()
        assert kept is not None
        assert asgi_put(path, data, headers)[0] == 200
        assert connection_of_worker() is kept
    finally:
        settings.CHUNK_DB_CONN_MAX_AGE = 0
        single.submit(chunk_endpoint._release_connections).result()  # noqa: SLF001
        single.shutdown()


def test_an_upload_token_ends_with_the_session_it_was_issued_in(uploader):
    client = signed_in(uploader)
    upload = init(client)
    data = os.urandom(CHUNK)
    headers = {
        "Authorization": f"Bearer {upload['upload_token']}",
        "Content-MD5": content_md5(data),
    }
    path = f"/api/v1/upload/{upload['upload_id']}/chunk?index=0"
    assert asgi_put(path, data, headers)[0] == 200
    assert client.post("/api/v1/auth/sessions/revoke-all", {}, format="json").status_code in (
        200,
        204,
    )
    assert asgi_put(path, data, headers)[0] == 401
    token_client = APIClient()
    token_client.credentials(HTTP_AUTHORIZATION=headers["Authorization"])
    assert token_client.get(f"/api/v1/upload/{upload['upload_id']}/status").status_code == 401


def test_an_upload_token_works_on_its_upload_endpoints_only(uploader):
    client = signed_in(uploader)
    upload = init(client)
    token_client = APIClient()
    token_client.credentials(HTTP_AUTHORIZATION=f"Bearer {upload['upload_token']}")
    base = f"/api/v1/upload/{upload['upload_id']}"
    assert token_client.get(f"{base}/status").status_code == 200
    assert token_client.post(f"{base}/complete").status_code == 409  # chunks missing
    assert token_client.post(f"{base}/confirm").json()["error"]["code"] == "nothing_to_confirm"
    assert token_client.post(f"{base}/retry").json()["error"]["code"] == "nothing_to_retry"
    for method, path in (("post", f"{base}/token"), ("get", "/api/v1/uploads")):
        response = getattr(token_client, method)(path)
        assert response.status_code == 403, path
        assert response.json()["error"]["code"] == "permission_denied", path
    assert token_client.delete(base).status_code == 204
    assert UploadSession.objects.get(pk=upload["upload_id"]).state == "cancelled"


def test_a_verified_token_is_trusted_for_the_recheck_time_then_checked_again(
    uploader, settings, monkeypatch
):
    from uploads.services import chunks

    settings.UPLOAD_TOKEN_RECHECK_SECONDS = 10
    monkeypatch.setattr(chunks, "_verified", {})
    clock = [1000.0]
    monkeypatch.setattr(chunks.time, "monotonic", lambda: clock[0])
    client = signed_in(uploader)
    upload = init(client)
    data = os.urandom(CHUNK)
    headers = {
        "Authorization": f"Bearer {upload['upload_token']}",
        "Content-MD5": content_md5(data),
    }
    path = f"/api/v1/upload/{upload['upload_id']}/chunk?index=0"
    assert asgi_put(path, data, headers)[0] == 200
    client.post("/api/v1/auth/sessions/revoke-all", {}, format="json")
    clock[0] += 9  # within the recheck time: the token is still trusted
    assert asgi_put(path, data, headers)[0] == 200
    clock[0] += 2  # past it: the revoked session ends the token
    assert asgi_put(path, data, headers)[0] == 401


def test_an_owner_whose_role_no_longer_uploads_is_refused_as_by_the_drf_view(uploader):
    upload = init(signed_in(uploader))
    token = upload["upload_token"]
    uploader.role = Role.AUDITOR
    uploader.save(update_fields=["role"])
    data = os.urandom(CHUNK)
    headers = {"Authorization": f"Bearer {token}", "Content-MD5": content_md5(data)}
    assert drf_put(upload, "?index=0", data, headers)[0] == 404
    status, _, body = asgi_put(f"/api/v1/upload/{upload['upload_id']}/chunk?index=0", data, headers)
    assert status == 404 and body["error"]["code"] == "not_found"
    assert not UploadChunk.objects.filter(session_id=upload["upload_id"]).exists()


def test_upload_tokens_go_to_the_owner_and_only_the_owner_sends_chunks(uploader):
    """A colleague may follow the upload, not send its chunks: no token is issued to them,
    and a token minted for anyone but the owner (as before, when they were) sends nothing."""
    facility = FacilityFactory()
    uploader.role, uploader.facility = Role.RADIOGRAPHER, facility
    uploader.save(update_fields=["role", "facility"])
    colleague = UserFactory(role=Role.RADIOGRAPHER, facility=facility)
    admin = UserFactory(role=Role.ADMIN, facility=None)
    upload = init(signed_in(uploader))
    status_path = f"/api/v1/upload/{upload['upload_id']}/status"
    for other in (colleague, admin):
        response = signed_in(other).post(f"/api/v1/upload/{upload['upload_id']}/token")
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "permission_denied"
    data = os.urandom(CHUNK)
    for other in (colleague, admin):
        minted = upload_token_issue(upload_id=upload["upload_id"], user_id=other.pk)
        headers = {"Authorization": f"Bearer {minted}", "Content-MD5": content_md5(data)}
        token_client = APIClient()
        token_client.credentials(HTTP_AUTHORIZATION=headers["Authorization"])
        assert token_client.get(status_path).status_code == 200  # reading stays fine
        drf = drf_put(upload, "?index=0", data, headers)
        status, _, body = asgi_put(
            f"/api/v1/upload/{upload['upload_id']}/chunk?index=0", data, headers
        )
        assert (status, body) == drf
        assert status == 403 and body["error"]["code"] == "permission_denied"
    assert not UploadChunk.objects.filter(session_id=upload["upload_id"]).exists()
    # Moved to another facility, the colleague's token no longer reaches the upload at all.
    colleague.facility = FacilityFactory()
    colleague.save(update_fields=["facility"])
    minted = upload_token_issue(upload_id=upload["upload_id"], user_id=colleague.pk)
    status, _, body = asgi_put(
        f"/api/v1/upload/{upload['upload_id']}/chunk?index=0",
        data,
        {"Authorization": f"Bearer {minted}", "Content-MD5": content_md5(data)},
    )
    assert status == 404 and body["error"]["code"] == "not_found"
    # A token minted for a user who is not the owner never reached it by the owner's rights.
    stranger = UserFactory(role=Role.CLINICIAN)
    forged_for_stranger = upload_token_issue(
        upload_id=upload["upload_id"], user_id=stranger.pk, session_id=None
    )
    token_client = APIClient()
    token_client.credentials(HTTP_AUTHORIZATION=f"Bearer {forged_for_stranger}")
    assert token_client.get(status_path).status_code == 404
    # The owner's own token sends.
    status, _, body = asgi_put(
        f"/api/v1/upload/{upload['upload_id']}/chunk?index=0",
        data,
        {"Authorization": f"Bearer {upload['upload_token']}", "Content-MD5": content_md5(data)},
    )
    assert status == 200


def expired_token(upload_id: Any, user_id: int) -> str:
    """A genuine upload token, signed just past the resume window ago."""
    import time

    from django.conf import settings
    from django.core import signing

    from uploads import tokens

    class SignedLongAgo(signing.TimestampSigner):
        def timestamp(self) -> str:
            age = settings.UPLOAD_RESUME_WINDOW.total_seconds() + 60
            return signing.b62_encode(int(time.time() - age))

    payload = {"u": str(upload_id), "o": user_id}
    return tokens.PREFIX + SignedLongAgo(salt=tokens._SALT).sign_object(payload)  # noqa: SLF001


def refused_tokens(uploader: Any) -> tuple[dict[str, Any], dict[str, tuple[str, int]]]:
    client = signed_in(uploader)
    upload, other = init(client), init(client)
    return upload, {
        "tampered": (upload["upload_token"][:-2] + "xx", 401),
        "not a token": ("upl_forged", 401),
        "expired": (expired_token(upload["upload_id"], uploader.pk), 401),
        "another upload's": (other["upload_token"], 404),
    }


def answer_without_body(path: str, token: str) -> tuple[int, bool]:
    """The status of a chunk PUT whose client never sends the body it announced, and
    whether the endpoint asked for that body."""
    sent: list[dict[str, Any]] = []
    body_asked = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"index=0",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"content-length", str(CHUNK).encode()),
            (b"authorization", f"Bearer {token}".encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }

    async def receive() -> dict[str, Any]:
        body_asked.append(True)
        await asyncio.Future()  # the client never sends its body
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def serve() -> None:
        await asyncio.wait_for(application(scope, receive, send), timeout=10)

    asyncio.run(serve())
    return sent[0]["status"], bool(body_asked)


def test_a_refused_token_is_answered_without_reading_the_body(uploader):
    upload, refused = refused_tokens(uploader)
    path = f"/api/v1/upload/{upload['upload_id']}/chunk"
    for name, (token, expected) in refused.items():
        assert answer_without_body(path, token) == (expected, False), name


def test_a_refused_token_gets_its_answer_while_the_client_has_not_sent_the_body(uploader, settings):
    """Over a real socket: headers that announce 16 MiB, then nothing; the answer comes."""
    import socket
    import threading
    import time

    import uvicorn

    settings.ALLOWED_HOSTS = ["testserver", "127.0.0.1"]
    upload, refused = refused_tokens(uploader)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(application, lifespan="off", log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        assert thread.is_alive(), "uvicorn stopped"
        time.sleep(0.01)
    try:
        for name, (token, expected) in refused.items():
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(
                    (
                        f"PUT /api/v1/upload/{upload['upload_id']}/chunk?index=0 HTTP/1.1\r\n"
                        "Host: 127.0.0.1\r\n"
                        f"Authorization: Bearer {token}\r\n"
                        "Content-Type: application/octet-stream\r\n"
                        "Content-MD5: 1B2M2Y8AsgTpgAmY7PhCfg==\r\n"
                        f"Content-Length: {16 * 1024 * 1024}\r\n\r\n"
                    ).encode()
                )
                answer = b""
                while b"\r\n\r\n" not in answer:
                    piece = conn.recv(65536)  # raises TimeoutError if no answer comes
                    assert piece, name
                    answer += piece
            assert answer.startswith(f"HTTP/1.1 {expected} ".encode()), (name, answer[:80])
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        listener.close()


@pytest.mark.parametrize(
    ("scheme", "forwarded", "secure"),
    [
        ("https", None, True),
        ("http", None, False),
        ("https", "http", False),
        ("http", "https", True),
    ],
)
def test_https_is_decided_as_django_decides_it(settings, scheme, forwarded, secure):
    from django.test import RequestFactory

    from uploads.chunk_endpoint import _is_secure

    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    headers = {b"x-forwarded-proto": forwarded.encode()} if forwarded else {}
    extra = {"HTTP_X_FORWARDED_PROTO": forwarded} if forwarded else {}
    request = RequestFactory().get("/", secure=scheme == "https", **extra)
    assert request.is_secure() is secure
    assert _is_secure({"scheme": scheme}, headers) is secure


def test_a_chunk_queued_behind_a_backlog_asks_for_one_at_a_time(uploader, settings, monkeypatch):
    """A chunk that waits for the process's chunk threads behind at least as many waiting
    chunks as there are threads (here one thread, busy, and one chunk already waiting) is
    stored and answered with ``max_in_flight: 1``; a chunk that waits only behind slow work
    (the thread busy, nobody else waiting: an S3 request, a flush) is answered without it."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from uploads import chunk_endpoint, metrics

    upload, data, headers, path = upload_with_chunk(uploader)
    single = ThreadPoolExecutor(max_workers=1)
    monkeypatch.setattr(chunk_endpoint, "_executor", single)
    monkeypatch.setattr(chunk_endpoint, "CHUNK_THREADS", 1)
    settings.UPLOAD_CHUNK_BUSY_SECONDS = 0.0  # any wait: the backlog alone decides here
    backlog = chunk_endpoint._backlog  # noqa: SLF001
    release = threading.Event()

    def occupy_the_thread() -> None:
        started = threading.Event()

        def busy() -> None:
            started.set()
            release.wait(30)

        release.clear()
        single.submit(busy)
        assert started.wait(10)

    def release_when_waiting(count: int) -> None:
        deadline = time.monotonic() + 30
        while backlog.waiting < count and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()

    slowed = metrics.CHUNKS_SLOWED_DOWN._value.get()  # noqa: SLF001
    try:
        # Behind slow work only: stored, no advice.
        occupy_the_thread()
        threading.Thread(target=release_when_waiting, args=(1,)).start()
        status, _, body = asgi_put(f"{path}0", data, headers)
        assert (status, body) == (200, {"index": 0, "received": True, "bytes_received": CHUNK})

        # Behind a backlog: chunk 1 waits first, then chunk 2 behind it.
        occupy_the_thread()
        answers: dict[int, Any] = {}
        first = threading.Thread(
            target=lambda: answers.update({1: asgi_put(f"{path}1", data, headers)})
        )
        first.start()
        deadline = time.monotonic() + 30
        while backlog.waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        threading.Thread(target=release_when_waiting, args=(2,)).start()
        last = data[:1000]  # the upload's last chunk is 1000 bytes
        last_headers = {**headers, "Content-MD5": content_md5(last)}
        status, _, body = asgi_put(f"{path}2", last, last_headers)
        first.join(30)
        assert answers[1][0] == 200 and "max_in_flight" not in answers[1][2]
        assert status == 200, body
        assert body.get("max_in_flight") == 1, body
        assert body["bytes_received"] == 2 * CHUNK + 1000
        assert metrics.CHUNKS_SLOWED_DOWN._value.get() == slowed + 1  # noqa: SLF001
        stored = UploadChunk.objects.filter(session_id=upload["upload_id"], stored=True)
        assert stored.count() == 3
        assert backlog.waiting == 0
    finally:
        release.set()
        single.submit(chunk_endpoint._release_connections).result()  # noqa: SLF001
        single.shutdown()


def test_a_chunk_whose_request_is_cancelled_while_it_waits_leaves_no_backlog(uploader, monkeypatch):
    """A chunk request cancelled while its chunk waits for a thread is never stored, and is
    no longer counted as waiting (else every later chunk would look like a backlog)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from uploads import chunk_endpoint

    upload, data, headers, path = upload_with_chunk(uploader)
    single = ThreadPoolExecutor(max_workers=1)
    monkeypatch.setattr(chunk_endpoint, "_executor", single)
    backlog = chunk_endpoint._backlog  # noqa: SLF001
    release = threading.Event()
    started = threading.Event()

    def busy() -> None:
        started.set()
        release.wait(30)

    try:
        single.submit(busy)
        assert started.wait(10)
        before = backlog.waiting
        asgi_put(f"{path}0", data, headers, until=lambda: backlog.waiting > before)
        release.set()
        single.submit(lambda: None).result(10)
        assert backlog.waiting == before
        assert not UploadChunk.objects.filter(session_id=upload["upload_id"], stored=True)
    finally:
        release.set()
        single.submit(chunk_endpoint._release_connections).result()  # noqa: SLF001
        single.shutdown()
