"""Fixtures of the accounts tests."""

from __future__ import annotations

import socket
import time

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Message
from django.core.cache import cache

from relaypacs.celery import app as celery_app

DELIVERY_DEADLINE_SECONDS = 10


@pytest.fixture(autouse=True)
def _fresh_rate_limits() -> None:
    """Rate-limit counters live in the cache, which outlives a test's transaction."""
    cache.clear()


@pytest.fixture(autouse=True)
def _celery_eager():
    """Account tasks (emails, cleanup) run in this process when queued, as a worker would
    run them, so a test sees their effect; errors in them fail the test."""
    saved = (celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates)
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    yield
    celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = saved


class Inbox(Message):
    """What a real SMTP server (aiosmtpd, on this machine) received."""

    def __init__(self):
        super().__init__()
        self.messages = []

    def handle_message(self, message):
        self.messages.append(message)

    def wait_for(self, count=1):
        """The first ``count`` messages, polling until they arrive or the deadline passes."""
        deadline = time.monotonic() + DELIVERY_DEADLINE_SECONDS
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(self.messages) >= count, f"{len(self.messages)} of {count} emails arrived"
        return self.messages[:count]

    @staticmethod
    def text(message):
        return message.get_payload(decode=True).decode()


@pytest.fixture
def smtp_server(settings):
    """A real SMTP server on a free local port, with Django's SMTP backend pointed at it."""
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
