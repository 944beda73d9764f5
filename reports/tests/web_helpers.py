"""Helpers of the tests of the radiologist's pages: a browser-like client signed in through
the staff web sign-in (the form, not force_login), and reports made as uploads make them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.test import Client
from django.utils import timezone

from accounts.tests.helpers import PASSWORD

from .factories import ReportFactory


def signed_in(user: Any, *, enforce_csrf: bool = False, otp: str = "") -> Client:
    """A client signed in as ``user`` through /accounts/login/ (the factories' password)."""
    client = Client(enforce_csrf_checks=enforce_csrf)
    if enforce_csrf:
        page = client.get("/accounts/login/")
        token = page.cookies["csrftoken"].value
        body = {"username": user.username, "password": PASSWORD, "otp": otp}
        response = client.post("/accounts/login/", {**body, "csrfmiddlewaretoken": token})
    else:
        response = client.post(
            "/accounts/login/", {"username": user.username, "password": PASSWORD, "otp": otp}
        )
    assert response.status_code == 302, response.content[:3000]
    return client


def report_received(minutes_ago: float, **fields: Any) -> Any:
    """A report opened ``minutes_ago`` minutes ago."""
    return ReportFactory(created_at=timezone.now() - timedelta(minutes=minutes_ago), **fields)


def csrf_token_of(client: Client, url: str) -> str:
    """The CSRF token a page gives its forms (the cookie's value works for every form)."""
    response = client.get(url)
    assert response.status_code == 200, response.content[:2000]
    return str(client.cookies["csrftoken"].value)
