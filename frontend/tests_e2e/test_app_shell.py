"""The root URL serves the built app, or says how to build it."""

from __future__ import annotations

from pathlib import Path

from django.test import RequestFactory

from relaypacs.urls import app_shell


def test_root_serves_the_built_app(settings, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>RelayPACS</title>")
    settings.FRONTEND_DIST = tmp_path
    response = app_shell(RequestFactory().get("/"))
    assert response.status_code == 200
    assert b"".join(response.streaming_content).startswith(b"<!doctype html>")
    assert response["Cache-Control"] == "no-cache"


def test_root_says_how_to_build_the_app_when_it_is_missing(settings, tmp_path: Path) -> None:
    settings.FRONTEND_DIST = tmp_path / "missing"
    response = app_shell(RequestFactory().get("/"))
    assert response.status_code == 503
    assert b"npm ci &amp;&amp; npm run build" in response.content
