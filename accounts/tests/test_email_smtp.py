"""Email verification through a real SMTP server (aiosmtpd) on this machine."""

import re
import socket
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Message

from accounts.tests.helpers import login

pytestmark = pytest.mark.django_db

DELIVERY_DEADLINE_SECONDS = 10


class Inbox(Message):
    def __init__(self):
        super().__init__()
        self.messages = []

    def handle_message(self, message):
        self.messages.append(message)


@pytest.fixture
def smtp_server(settings):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    yield inbox
    controller.stop()


def test_registration_email_arrives_over_smtp_and_its_link_verifies(
    client, smtp_server, django_capture_on_commit_callbacks
):
    password = "Blue-Harbour-Lantern-42"
    body = {
        "username": "mtech",
        "email": "mtech@clinic.example",
        "password": password,
        "full_name": "Mo Tech",
    }
    with django_capture_on_commit_callbacks(execute=True):
        assert (
            client.post("/api/v1/auth/register", body, content_type="application/json").status_code
            == 201
        )
    deadline = time.monotonic() + DELIVERY_DEADLINE_SECONDS
    while not smtp_server.messages and time.monotonic() < deadline:
        time.sleep(0.05)
    assert smtp_server.messages, "no email reached the SMTP server"
    message = smtp_server.messages[0]
    assert message["To"] == "mtech@clinic.example"
    assert message["Subject"] == "Confirm your RelayPACS email address"
    text = message.get_payload(decode=True).decode()
    path = re.search(r"https?://[^/\s]+(/\S+)", text).group(1)
    assert client.get(path).status_code == 200
    assert login(client, "mtech", password).status_code == 200
