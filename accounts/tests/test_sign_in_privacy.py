"""Signing in after a registration does not tell whether the registration made an account:
an account whose email address is not confirmed is answered exactly like a wrong password,
and (at most every 15 minutes) its confirmation email goes out again."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from accounts.tests.factories import UserFactory
from accounts.tests.helpers import login

pytestmark = pytest.mark.django_db

STRONG = "Blue-Harbour-Lantern-42"
VERIFY_SUBJECT = "Confirm your RelayPACS email address"


def register(client, username, email):
    body = {"username": username, "email": email, "password": STRONG, "full_name": "Eve Smith"}
    return client.post("/api/v1/auth/register", body, content_type="application/json")


def answer(response):
    return response.status_code, response.json()


def test_sign_in_after_registering_with_a_taken_or_free_email_or_username_looks_the_same(
    client, django_capture_on_commit_callbacks
):
    UserFactory(username="victim", email="victim@clinic.example")
    with django_capture_on_commit_callbacks(execute=True):
        assert register(client, "probe-taken-email", "victim@clinic.example").status_code == 201
        assert register(client, "probe-free-email", "free@clinic.example").status_code == 201
        assert register(client, "VICTIM", "other@clinic.example").status_code == 201
    # The registration with the free address made an account; the probes with the taken
    # address and the taken username did not. Signing in must not tell which.
    assert User.objects.filter(username="probe-free-email", email_verified=False).exists()
    with django_capture_on_commit_callbacks(execute=True):
        taken_email = login(client, "probe-taken-email", STRONG)
        free_email = login(client, "probe-free-email", STRONG)
        taken_username = login(client, "VICTIM", STRONG)
        wrong_password = login(client, "victim", "not the password")
    assert answer(free_email) == answer(taken_email) == answer(taken_username)
    assert answer(free_email) == answer(wrong_password)
    status, body = answer(free_email)
    assert status == 401
    assert body["error"]["code"] == "invalid_credentials"
    assert "not confirmed yet" in body["error"]["message"]
    assert "confirmation email" in body["error"]["hint"]
    assert "Forgot your password?" in body["error"]["hint"]


def test_the_right_password_of_an_unconfirmed_account_resends_its_link_at_most_every_15_minutes(
    client, smtp_server, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        register(client, "jdoe", "jdoe@clinic.example")
    smtp_server.wait_for(1)
    with django_capture_on_commit_callbacks(execute=True):
        wrong = login(client, "jdoe", "not the password")
    assert wrong.status_code == 401
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(3):
            assert login(client, "jdoe", STRONG).status_code == 401
    # One more confirmation email, not one per attempt, and none for the wrong password.
    first, again = smtp_server.wait_for(2)
    assert len(smtp_server.messages) == 2
    assert again["To"] == "jdoe@clinic.example" and again["Subject"] == VERIFY_SUBJECT
    token = re.search(r"token=(\S+)", smtp_server.text(again)).group(1)
    verified = client.post(
        "/api/v1/auth/verify-email", {"token": token}, content_type="application/json"
    )
    assert verified.status_code == 200
    assert login(client, "jdoe", STRONG).status_code == 200


def statements(response_maker):
    """The kinds of SQL statements a registration runs (verb and table), in order, without
    the savepoint statements (a taken one rolls its savepoint back, a new one releases it)."""
    with CaptureQueriesContext(connection) as queries:
        assert response_maker().status_code == 201
    kinds = []
    for query in queries.captured_queries:
        sql = query["sql"]
        verb = sql.split()[0].upper()
        if verb in {"SAVEPOINT", "RELEASE", "ROLLBACK"}:
            continue
        table = re.search(r'(?:FROM|INTO|UPDATE)\s+"(\w+)"', sql)
        kinds.append((verb, table.group(1) if table else ""))
    return kinds


def test_taken_email_and_taken_username_registrations_do_the_same_database_work(client):
    UserFactory(username="owner", email="owner@clinic.example")
    new = statements(lambda: register(client, "fresh", "fresh@clinic.example"))
    taken_email = statements(lambda: register(client, "fresh2", "OWNER@clinic.example"))
    taken_username = statements(lambda: register(client, "Owner", "other@clinic.example"))
    assert ("INSERT", "accounts_user") in new
    assert new == taken_email == taken_username
    assert set(User.objects.values_list("username", flat=True)) == {"owner", "fresh"}
