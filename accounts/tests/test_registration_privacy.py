"""Registration does not tell whether a username or an address is taken; the address learns
it by email (through a real SMTP server), sent by a Celery task after the request."""

import pytest

from accounts import tasks
from accounts.models import AuditEvent, User
from accounts.tests.factories import UserFactory

pytestmark = pytest.mark.django_db

STRONG = "Blue-Harbour-Lantern-42"


def register(client, **changes):
    body = {
        "username": "jdoe",
        "email": "jdoe@clinic.example",
        "password": STRONG,
        "full_name": "Jane Doe",
        **changes,
    }
    return client.post("/api/v1/auth/register", body, content_type="application/json")


def expected_body(**changes):
    return {
        "username": "jdoe",
        "email": "jdoe@clinic.example",
        "full_name": "Jane Doe",
        "role": "clinician",
        "email_verified": False,
        "approval": "pending",
        **changes,
    }


def test_new_taken_email_and_taken_username_get_the_same_answer(
    client, smtp_server, django_capture_on_commit_callbacks
):
    owner = UserFactory(username="owner", email="jdoe@clinic.example")
    UserFactory(username="taken", email="taken@clinic.example")
    with django_capture_on_commit_callbacks(execute=True):
        new = register(client, email="fresh@clinic.example")
        taken_email = register(client, username="someone-new", email="JDOE@clinic.example")
        taken_username = register(client, username="TAKEN", email="other@clinic.example")
    assert new.status_code == taken_email.status_code == taken_username.status_code == 201
    assert new.json() == expected_body(email="fresh@clinic.example")
    assert taken_email.json() == expected_body(username="someone-new", email="JDOE@clinic.example")
    assert taken_username.json() == expected_body(username="TAKEN", email="other@clinic.example")
    assert set(new.json()) == set(taken_email.json()) == set(taken_username.json())
    # Only the new registration made an account.
    assert set(User.objects.values_list("username", flat=True)) == {"owner", "taken", "jdoe"}
    assert AuditEvent.objects.filter(action="user_registered").count() == 1

    by_recipient = {m["To"]: m for m in smtp_server.wait_for(3)}
    assert set(by_recipient) == {"fresh@clinic.example", owner.email, "other@clinic.example"}
    assert by_recipient["fresh@clinic.example"]["Subject"] == "Confirm your RelayPACS email address"
    notice = smtp_server.text(by_recipient[owner.email])
    assert (
        by_recipient[owner.email]["Subject"] == "Someone tried to register with your email address"
    )
    assert "sign in" in notice and "reset your password" in notice
    retry = smtp_server.text(by_recipient["other@clinic.example"])
    assert "'TAKEN'" in retry and "already taken" in retry and "another username" in retry


def test_the_email_is_queued_after_commit_not_sent_during_the_request(
    client, mailoutbox, django_capture_on_commit_callbacks
):
    UserFactory(username="owner", email="jdoe@clinic.example")
    answers = []
    for email in ("fresh@clinic.example", "jdoe@clinic.example"):
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            answers.append(register(client, username=f"u{len(answers)}", email=email))
        # The request itself sent nothing: each case left exactly one task to queue.
        assert mailoutbox == []
        assert len(callbacks) == 1
    assert [a.status_code for a in answers] == [201, 201]


def test_a_weak_password_is_refused_the_same_for_a_taken_address(client):
    UserFactory(username="owner", email="jdoe@clinic.example")
    taken = register(client, password="short")
    fresh = register(client, email="fresh@clinic.example", password="short")
    assert taken.status_code == fresh.status_code == 400
    assert taken.json() == fresh.json()


def test_mail_tasks_retry_a_failing_mail_server_and_are_acked_late():
    for task in (
        tasks.verification_email_task,
        tasks.password_reset_email_task,
        tasks.registration_attempt_notice_task,
        tasks.username_taken_notice_task,
        tasks.email_change_attempt_notice_task,
    ):
        assert task.acks_late is True
        assert OSError in task.autoretry_for and task.max_retries
