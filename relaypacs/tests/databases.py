"""A fresh, empty PostgreSQL database beside the test database, for tests that start
processes of their own on it (several nodes, several beats): nothing else of the test
session (its Celery worker and beat, on the test database) shares its locks or rows."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import psycopg
from django.conf import settings
from django.db import connections


def _server_params() -> dict[str, Any]:
    db = settings.DATABASES["default"]
    assert db["ENGINE"] == "django.db.backends.postgresql", "these tests need PostgreSQL"
    return {
        "host": db.get("HOST") or "127.0.0.1",
        "port": int(db.get("PORT") or 5432),
        "user": db.get("USER") or "postgres",
        "password": db.get("PASSWORD") or None,
    }


def database_url(name: str) -> str:
    params = _server_params()
    auth = quote(params["user"])
    if params["password"]:
        auth += ":" + quote(params["password"])
    return f"postgres://{auth}@{params['host']}:{params['port']}/{name}"


@contextmanager
def fresh_database(purpose: str) -> Iterator[str]:
    """Create an empty database named after the test database and ``purpose``, yield its
    DATABASE_URL, and drop it afterwards (ending whatever sessions are still on it)."""
    # Named after the test database (pytest-django's test_<name>, one per xdist process).
    name = f"{connections['default'].settings_dict['NAME']}_{purpose}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dbname="postgres", autocommit=True, **_server_params()) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(name)
    finally:
        with psycopg.connect(dbname="postgres", autocommit=True, **_server_params()) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
