from datetime import timedelta

import jwt
import pytest
from django.conf import settings
from django.utils import timezone
from rest_framework_simplejwt.tokens import AccessToken

from accounts.models import AuditEvent, AuthSession
from accounts.tests.factories import UserFactory
from accounts.tests.helpers import bearer, login, refresh

pytestmark = pytest.mark.django_db


def test_token_lifetimes_are_60_minutes_and_7_days(client):
    user = UserFactory()
    tokens = login(client, user.username).json()
    access = jwt.decode(tokens["access"], options={"verify_signature": False})
    refresh_claims = jwt.decode(tokens["refresh"], options={"verify_signature": False})
    assert access["exp"] - access["iat"] == 60 * 60
    assert refresh_claims["exp"] - refresh_claims["iat"] == 7 * 24 * 3600
    assert access["sid"] == refresh_claims["sid"]


def test_login_records_the_device_as_a_session(client):
    user = UserFactory()
    login(
        client, user.username, meta={"HTTP_USER_AGENT": "PWA/1.0 Chrome", "REMOTE_ADDR": "10.1.2.3"}
    )
    session = AuthSession.objects.get(user=user)
    assert session.user_agent == "PWA/1.0 Chrome"
    assert session.ip_address == "10.1.2.3"
    assert session.revoked_at is None


def test_reusing_a_rotated_refresh_token_revokes_the_whole_session(client):
    user = UserFactory()
    first = login(client, user.username).json()
    second = refresh(client, first["refresh"]).json()
    # A thief replays the old refresh token: the session family ends.
    assert refresh(client, first["refresh"]).status_code == 401
    assert refresh(client, second["refresh"]).status_code == 401
    assert client.get("/api/v1/uploads", **bearer(second["access"])).status_code == 401
    session = AuthSession.objects.get(user=user)
    assert session.revoked_reason == "reuse_detected"
    assert AuditEvent.objects.filter(action="session_reuse_detected", user=user).exists()


def test_reuse_in_one_session_leaves_other_devices_signed_in(client):
    user = UserFactory()
    phone = login(client, user.username).json()
    desk = login(client, user.username).json()
    refresh(client, phone["refresh"])
    refresh(client, phone["refresh"])  # reuse on the phone
    assert client.get("/api/v1/uploads", **bearer(desk["access"])).status_code == 200


def test_sessions_list_marks_the_current_device(client):
    user = UserFactory()
    login(client, user.username, meta={"HTTP_USER_AGENT": "Phone"})
    mine = login(client, user.username, meta={"HTTP_USER_AGENT": "Desk"}).json()
    response = client.get("/api/v1/auth/sessions", **bearer(mine["access"]))
    assert response.status_code == 200
    rows = response.json()
    assert {r["user_agent"] for r in rows} == {"Phone", "Desk"}
    assert [r["user_agent"] for r in rows if r["current"]] == ["Desk"]


def test_revoking_one_session_signs_that_device_out(client):
    user = UserFactory()
    phone = login(client, user.username, meta={"HTTP_USER_AGENT": "Phone"}).json()
    desk = login(client, user.username, meta={"HTTP_USER_AGENT": "Desk"}).json()
    phone_sid = AuthSession.objects.get(user=user, user_agent="Phone").id
    response = client.delete(f"/api/v1/auth/sessions/{phone_sid}", **bearer(desk["access"]))
    assert response.status_code == 204
    assert client.get("/api/v1/uploads", **bearer(phone["access"])).status_code == 401
    assert refresh(client, phone["refresh"]).status_code == 401
    assert client.get("/api/v1/uploads", **bearer(desk["access"])).status_code == 200
    assert AuditEvent.objects.filter(action="session_revoked", object_id=str(phone_sid)).exists()


def test_another_users_session_is_404(client):
    me, other = UserFactory(), UserFactory()
    mine = login(client, me.username).json()
    login(client, other.username)
    their_sid = AuthSession.objects.get(user=other).id
    response = client.delete(f"/api/v1/auth/sessions/{their_sid}", **bearer(mine["access"]))
    assert response.status_code == 404
    assert AuthSession.objects.get(pk=their_sid).revoked_at is None


def test_log_out_everywhere_ends_every_session(client):
    user = UserFactory()
    devices = [login(client, user.username).json() for _ in range(3)]
    response = client.post(
        "/api/v1/auth/sessions/revoke-all",
        {},
        content_type="application/json",
        **bearer(devices[0]["access"]),
    )
    assert response.json() == {"revoked": 3}
    for tokens in devices:
        assert client.get("/api/v1/uploads", **bearer(tokens["access"])).status_code == 401


def test_log_out_everywhere_else_keeps_this_device(client):
    user = UserFactory()
    here, elsewhere = (login(client, user.username).json() for _ in range(2))
    response = client.post(
        "/api/v1/auth/sessions/revoke-all",
        {"keep_current": True},
        content_type="application/json",
        **bearer(here["access"]),
    )
    assert response.json() == {"revoked": 1}
    assert client.get("/api/v1/uploads", **bearer(here["access"])).status_code == 200
    assert client.get("/api/v1/uploads", **bearer(elsewhere["access"])).status_code == 401


def test_an_idle_session_expires(client, settings):
    settings.AUTH_SESSION_IDLE_TIMEOUT = timedelta(hours=1)
    user = UserFactory()
    tokens = login(client, user.username).json()
    AuthSession.objects.filter(user=user).update(last_seen_at=timezone.now() - timedelta(hours=2))
    assert refresh(client, tokens["refresh"]).status_code == 401
    assert client.get("/api/v1/uploads", **bearer(tokens["access"])).status_code == 401
    assert AuthSession.objects.get(user=user).revoked_reason == "idle"


def test_logout_ends_the_session_and_its_access_token(client):
    user = UserFactory()
    tokens = login(client, user.username).json()
    client.post(
        "/api/v1/auth/logout", {"refresh": tokens["refresh"]}, content_type="application/json"
    )
    assert client.get("/api/v1/uploads", **bearer(tokens["access"])).status_code == 401
    assert AuditEvent.objects.filter(action="logout", user=user).exists()


def test_anonymous_call_is_401_with_www_authenticate(client):
    response = client.get("/api/v1/uploads")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    response = client.get("/api/v1/auth/sessions")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def _forge(claims, key, algorithm="HS256"):
    return jwt.encode(claims, key, algorithm=algorithm)


def _claims(user, **changes):
    now = int(timezone.now().timestamp())
    claims = {
        "token_type": "access",
        "exp": now + 600,
        "iat": now,
        "jti": "x" * 32,
        "user_id": user.pk,
    }
    claims.update(changes)
    return claims


@pytest.mark.parametrize(
    "forgery", ["alg_none", "wrong_key", "expired", "tampered", "refresh_as_access"]
)
def test_forged_jwts_are_refused(client, forgery):
    user, admin = UserFactory(), UserFactory(role="admin")
    if forgery == "alg_none":
        token = _forge(_claims(user), None, algorithm="none")
    elif forgery == "wrong_key":
        token = _forge(_claims(user), "not-the-server-key-but-long-enough-for-hs256")
    elif forgery == "expired":
        token = _forge(_claims(user, exp=int(timezone.now().timestamp()) - 10), settings.SECRET_KEY)
    elif forgery == "tampered":
        genuine = str(AccessToken.for_user(user))
        header, payload, signature = genuine.split(".")
        evil = jwt.encode(_claims(admin), "k" * 32).split(".")[1]
        token = ".".join([header, evil, signature])
    else:
        token = _forge(_claims(user, token_type="refresh"), settings.SECRET_KEY)
    response = client.get("/api/v1/uploads", **bearer(token))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"


def test_the_sessions_list_costs_the_same_queries_for_many_devices(
    client, django_assert_max_num_queries
):
    user = UserFactory()
    tokens = [login(client, user.username).json() for _ in range(8)]
    with django_assert_max_num_queries(4):
        response = client.get("/api/v1/auth/sessions", **bearer(tokens[-1]["access"]))
    assert len(response.json()) == 8
