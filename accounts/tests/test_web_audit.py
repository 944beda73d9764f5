"""The auditor's page at /audit/ (Django test client, signed in through the staff web
sign-in): who may open it, the filters, the preview and the CSV and JSON downloads."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from accounts.models import AuditEvent, AuditOutcome, Role
from accounts.tests.factories import FacilityFactory, UserFactory
from accounts.tests.helpers import PASSWORD

pytestmark = pytest.mark.django_db


def signed_in(user: Any) -> Any:
    """A client signed in as ``user`` through /accounts/login/ (the factories' password)."""
    from django.test import Client

    client = Client()
    answer = client.post("/accounts/login/", {"username": user.username, "password": PASSWORD})
    assert answer.status_code == 302, answer.content[:2000]
    return client


def _event(action: str, *, who: Any, facility: Any, day: str, outcome: str = "0") -> AuditEvent:
    from accounts.services.audit import AUDIT_VOCABULARY

    event_id, event_type = AUDIT_VOCABULARY[action]
    return AuditEvent.objects.create(
        occurred_at=datetime.fromisoformat(f"{day}T10:00:00").replace(tzinfo=UTC),
        action=action,
        event_id=event_id,
        event_type=event_type,
        outcome=outcome,
        user=who,
        username=who.username,
        facility=facility,
        ip_address="10.0.0.7",
        detail={"count": 1},
    )


@pytest.fixture
def trail() -> dict[str, Any]:
    north = FacilityFactory(code="north", name="North Clinic")
    south = FacilityFactory(code="south", name="South Clinic")
    tess = UserFactory(username="tess", role=Role.RADIOGRAPHER, facility=north)
    sam = UserFactory(username="sam", role=Role.CLINICIAN, facility=south)
    _event("login", who=tess, facility=north, day="2026-03-01")
    _event(
        "login_failed",
        who=tess,
        facility=north,
        day="2026-03-02",
        outcome=AuditOutcome.MINOR_FAILURE,
    )
    _event("data_import", who=tess, facility=north, day="2026-03-05")
    _event("login", who=sam, facility=south, day="2026-03-03")
    _event("instances_transferred", who=sam, facility=south, day="2026-03-09")
    return {
        "north": north,
        "south": south,
        "bound": UserFactory(username="aud-north", role=Role.AUDITOR, facility=north),
        "free": UserFactory(username="aud-all", role=Role.AUDITOR, facility=None),
        "admin": UserFactory(username="boss", role=Role.ADMIN, facility=None),
        "reader": UserFactory(username="rad", role=Role.RADIOLOGIST, facility=None),
        "tess": tess,
    }


def _rows(page: Any) -> int:
    return page.content.decode().count('<tr class="outcome-')


def test_signed_out_visitors_are_sent_to_the_sign_in(trail: dict[str, Any]) -> None:
    from django.test import Client

    answer = Client().get("/audit/?user=tess")
    assert answer.status_code == 302
    assert answer["Location"] == "/accounts/login/?next=%2Faudit%2F%3Fuser%3Dtess"


@pytest.mark.parametrize("who", ["reader", "tess"])
def test_other_roles_get_the_403_page(trail: dict[str, Any], who: str) -> None:
    client = signed_in(trail[who])
    for url in ("/audit/", "/audit/export.csv", "/audit/export.json"):
        answer = client.get(url)
        assert answer.status_code == 403
        assert "This page is for auditors" in answer.content.decode()
    assert not AuditEvent.objects.filter(action="audit_log_used").exists()


def test_an_auditor_of_a_facility_sees_that_facility_only(trail: dict[str, Any]) -> None:
    client = signed_in(trail["bound"])
    page = client.get("/audit/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Events filed under <strong>North Clinic</strong>" in text
    assert _rows(page) == 3 + 1  # tess's three and the auditor's own sign-in (North)
    assert 'value="south"' not in text  # the facility filter offers North only
    assert client.get("/audit/", {"facility": "south"}).status_code == 200
    assert _rows(client.get("/audit/", {"facility": "south"})) == 0


def test_the_filters_narrow_the_preview(trail: dict[str, Any]) -> None:
    client = signed_in(trail["free"])
    assert _rows(client.get("/audit/", {"user": "sam"})) == 2
    assert _rows(client.get("/audit/", {"facility": "north", "action": "login"})) == 1
    assert _rows(client.get("/audit/", {"outcome": "4"})) == 1
    dated = client.get("/audit/", {"date_from": "2026-03-02", "date_to": "2026-03-05"})
    assert _rows(dated) == 3  # the 2nd, 3rd and 5th of March, whole days
    assert "3</strong> events match" in dated.content.decode()
    swapped = client.get("/audit/", {"date_from": "2026-03-05", "date_to": "2026-03-01"})
    assert "swap the two dates" in swapped.content.decode()
    assert _rows(swapped) == 0


def test_the_csv_download_streams_the_filtered_rows_and_is_audited(
    trail: dict[str, Any],
) -> None:
    client = signed_in(trail["free"])
    answer = client.get("/audit/export.csv", {"facility": "north", "date_to": "2026-03-31"})
    assert answer.status_code == 200
    assert answer.streaming
    assert answer["Content-Type"] == "text/csv; charset=utf-8"
    assert answer["Content-Disposition"].startswith('attachment; filename="relaypacs-audit-')
    rows = list(csv.DictReader(io.StringIO(b"".join(answer.streaming_content).decode())))
    assert [r["action"] for r in rows] == ["login", "login_failed", "data_import"]
    assert rows[1]["outcome"] == "Minor failure"
    used = AuditEvent.objects.get(action="audit_log_used")
    assert used.username == "aud-all"
    assert used.detail == {
        "filters": {"facility": "north", "date_to": "2026-03-31", "format": "csv"}
    }


def test_the_json_download_has_the_same_rows_and_is_audited(trail: dict[str, Any]) -> None:
    client = signed_in(trail["bound"])
    answer = client.get("/audit/export.json", {"user": "tess"})
    assert answer.status_code == 200
    assert answer["Content-Type"] == "application/json; charset=utf-8"
    events = json.loads(b"".join(answer.streaming_content))
    assert [e["action"] for e in events] == ["login", "login_failed", "data_import"]
    assert events[0]["facility"] == "north"
    assert events[0]["detail"] == {"count": 1}
    assert AuditEvent.objects.get(action="audit_log_used").detail["filters"] == {
        "user": "tess",
        "format": "json",
    }


def test_a_download_with_invalid_filters_is_refused_and_not_audited(
    trail: dict[str, Any],
) -> None:
    client = signed_in(trail["admin"])
    answer = client.get("/audit/export.csv", {"date_from": "2026-03-05", "date_to": "2026-03-01"})
    assert answer.status_code == 400
    assert "swap the two dates" in answer.content.decode()
    assert not AuditEvent.objects.filter(action="audit_log_used").exists()


def test_the_sign_in_sends_an_auditor_to_the_audit_trail(trail: dict[str, Any]) -> None:
    client = signed_in(trail["free"])
    home = client.get("/accounts/")
    assert home.status_code == 302
    assert home["Location"] == "/audit/"


def test_an_export_of_the_api_is_unchanged_by_the_page(trail: dict[str, Any]) -> None:
    from uploads.tests.fixtures import client_for

    answer = client_for(trail["free"]).get("/api/v1/auth/audit/events.csv", {"user": "sam"})
    assert answer.status_code == 200
    lines = b"".join(answer.streaming_content).decode().splitlines()
    assert lines[0].startswith("occurred_at,action,event_id")
    assert len(lines) == 3


def test_the_api_gives_the_json_form_with_the_outcome_filter(trail: dict[str, Any]) -> None:
    from uploads.tests.fixtures import client_for

    api = client_for(trail["bound"])
    answer = api.get("/api/v1/auth/audit/events.json", {"outcome": "4"})
    assert answer.status_code == 200
    assert answer["Content-Type"] == "application/json; charset=utf-8"
    events = json.loads(b"".join(answer.streaming_content))
    assert [(e["action"], e["username"], e["outcome"]) for e in events] == [
        ("login_failed", "tess", "Minor failure")
    ]
    assert AuditEvent.objects.get(action="audit_log_used").detail["filters"] == {
        "outcome": "4",
        "format": "json",
    }
    refused = client_for(trail["tess"]).get("/api/v1/auth/audit/events.json")
    assert refused.status_code == 403
