"""Client-side helpers of the accounts tests."""

from __future__ import annotations

from typing import Any

PASSWORD = "correct horse battery"


def login(client: Any, username: str, password: str = PASSWORD, **body: Any) -> Any:
    """POST /auth/login; ``meta`` passes request headers such as REMOTE_ADDR."""
    meta = body.pop("meta", {})
    return client.post(
        "/api/v1/auth/login",
        {"username": username, "password": password, **body},
        content_type="application/json",
        **meta,
    )


def refresh(client: Any, token: str) -> Any:
    return client.post("/api/v1/auth/refresh", {"refresh": token}, content_type="application/json")


def bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}
