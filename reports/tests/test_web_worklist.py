"""The radiologist's worklist at /reports/: who gets it, its order, filters, search, counts,
the STAT alert, pages of 50 and a query count that does not grow with the rows."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Role
from accounts.tests.factories import FacilityFactory, UserFactory
from reports.models import ReportStatus

from .factories import ReportFactory
from .web_helpers import report_received, signed_in

pytestmark = pytest.mark.django_db


def rows(response) -> list[str]:
    """The patient names of the worklist's rows, in order."""
    html = response.content.decode()
    return re.findall(r'data-row-link class="patient">([^<]*)<', html)


@pytest.fixture
def reader():
    return UserFactory(role=Role.RADIOLOGIST, facility=None, full_name="Dr Reader")


def test_signed_out_visitor_is_sent_to_the_sign_in_and_back(client):
    response = client.get("/reports/?status=all")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=%2Freports%2F%3Fstatus%3Dall"


@pytest.mark.parametrize("role", [Role.RADIOGRAPHER, Role.CLINICIAN, Role.AUDITOR])
def test_other_roles_get_a_page_saying_it_is_for_radiologists(role):
    user = UserFactory(role=role)
    response = signed_in(user).get("/reports/")
    assert response.status_code == 403
    html = response.content.decode()
    assert "This page is for radiologists" in html
    assert user.username in html
    assert "Sign out and sign in with another account" in html  # a way out
    assert 'href="/"' in html


def test_an_administrator_gets_the_worklist():
    admin = UserFactory(role=Role.ADMIN)
    report_received(5, patient_name="ADMIN^SEES")
    response = signed_in(admin).get("/reports/")
    assert response.status_code == 200
    assert rows(response) == ["ADMIN, SEES"]


def test_order_is_service_level_then_time_received(reader):
    report_received(50, patient_name="ROUTINE^OLD", service_level="routine")
    report_received(5, patient_name="STAT^NEW", service_level="stat")
    report_received(40, patient_name="URGENT^OLD", service_level="urgent")
    report_received(20, patient_name="STAT^OLD", service_level="stat")
    report_received(30, patient_name="EMERGENCY^A", service_level="emergency")
    report_received(10, patient_name="ROUTINE^NEW", service_level="routine")
    response = signed_in(reader).get("/reports/")
    assert rows(response) == [
        "STAT, OLD",
        "STAT, NEW",
        "EMERGENCY, A",
        "URGENT, OLD",
        "ROUTINE, OLD",
        "ROUTINE, NEW",
    ]


def test_a_stat_study_waiting_past_the_alert_time_stands_out(reader, settings):
    settings.REPORT_STAT_ALERT_MINUTES = 30
    late = report_received(31, patient_name="STAT^LATE", service_level="stat")
    report_received(29, patient_name="STAT^ONTIME", service_level="stat")
    report_received(90, patient_name="URGENT^WAITING", service_level="urgent")
    response = signed_in(reader).get("/reports/")
    html = response.content.decode()
    assert html.count('class="level-stat overdue"') == 1
    assert "1 STAT study is waiting longer than 30 minutes." in html
    row = html[html.index('class="level-stat overdue"') :]
    assert row[: row.index("</tr>")].count("STAT, LATE") == 1
    assert "Over 30 min" in row[: row.index("</tr>")]
    assert "31 min ago" in row[: row.index("</tr>")]
    # Once read, the study no longer stands out.
    ReportFactory._meta.model.objects.filter(pk=late.pk).update(status=ReportStatus.READY)
    html = signed_in(reader).get("/reports/?status=all").content.decode()
    assert "overdue" not in html.split("<table", 1)[1].split("</table>")[0]


def test_the_alert_time_is_a_setting(reader, settings):
    settings.REPORT_STAT_ALERT_MINUTES = 5
    report_received(6, service_level="stat")
    assert 'class="level-stat overdue"' in signed_in(reader).get("/reports/").content.decode()


def test_filters_by_status_modality_facility_service_level_and_date(reader):
    north, south = FacilityFactory(name="North"), FacilityFactory(name="South")
    report_received(5, patient_name="CT^NORTH", modality="CT\\SR", facility=north)
    report_received(5, patient_name="MR^SOUTH", modality="MR", facility=south)
    report_received(
        5, patient_name="DONE^CT", modality="CT", facility=north, status=ReportStatus.READY
    )
    report_received(60 * 24 * 3, patient_name="OLD^CT", modality="CT", facility=south)
    report_received(5, patient_name="STAT^MR", modality="MR", facility=south, service_level="stat")
    client = signed_in(reader)
    by = lambda query: sorted(rows(client.get(f"/reports/?{query}")))  # noqa: E731
    assert by("") == ["CT, NORTH", "MR, SOUTH", "OLD, CT", "STAT, MR"]  # open ones
    assert by("status=ready") == ["DONE, CT"]
    assert by("status=all") == ["CT, NORTH", "DONE, CT", "MR, SOUTH", "OLD, CT", "STAT, MR"]
    assert by("modality=CT") == ["CT, NORTH", "OLD, CT"]
    assert by(f"facility={south.pk}") == ["MR, SOUTH", "OLD, CT", "STAT, MR"]
    assert by("service_level=stat") == ["STAT, MR"]
    # The day of the reports opened 5 minutes ago (yesterday when the test runs at 00:03).
    recent_day = timezone.localtime(timezone.now() - timedelta(minutes=5)).date()
    assert by(f"date_from={recent_day.isoformat()}") == ["CT, NORTH", "MR, SOUTH", "STAT, MR"]
    old_day = (recent_day - timedelta(days=3)).isoformat()
    assert by(f"date_to={old_day}") == ["OLD, CT"]


def test_search_by_patient_name_id_or_accession(reader):
    report_received(5, patient_name="DOE^JANE", patient_id="P-100", accession_number="A1")
    report_received(5, patient_name="ROE^RICHARD", patient_id="P-200", accession_number="ACC-77")
    client = signed_in(reader)
    assert rows(client.get("/reports/?q=jane+doe")) == ["DOE, JANE"]
    assert rows(client.get("/reports/?q=P-200")) == ["ROE, RICHARD"]
    assert rows(client.get("/reports/?q=acc-77")) == ["ROE, RICHARD"]
    assert rows(client.get("/reports/?q=nobody")) == []
    assert "No report matches these filters." in client.get("/reports/?q=nobody").content.decode()


def test_an_invalid_filter_is_ignored_with_a_sentence(reader):
    report_received(5, patient_name="STILL^LISTED")
    response = signed_in(reader).get("/reports/?date_from=yesterday&service_level=asap")
    assert response.status_code == 200
    assert rows(response) == ["STILL, LISTED"]
    assert "(this filter was ignored)" in response.content.decode()


def test_counts_per_status_follow_the_other_filters(reader):
    for status, n in [("assigned", 3), ("pending", 2), ("ready", 1)]:
        for _ in range(n):
            report_received(5, status=status, modality="CT")
    report_received(5, status="assigned", modality="MR")
    html = signed_in(reader).get("/reports/?modality=CT").content.decode()
    tabs = dict(re.findall(r'>([A-Za-z ]+) <span class="count">(\d+)</span>', html))
    assert tabs["Open"] == "5"
    assert tabs["On the worklist"] == "3"
    assert tabs["Being read"] == "2"
    assert tabs["Ready"] == "1"
    assert tabs["All"] == "6"


def test_fifty_per_page(reader):
    for i in range(53):
        report_received(100 - i, patient_name=f"PATIENT^{i:02d}")
    client = signed_in(reader)
    first = client.get("/reports/")
    assert len(rows(first)) == 50
    assert "Page 1 of 2 · 53 reports" in first.content.decode()
    second = client.get("/reports/?page=2")
    assert rows(second) == ["PATIENT, 50", "PATIENT, 51", "PATIENT, 52"]


def test_a_restricted_radiologist_sees_only_their_facilities():
    mine, other = FacilityFactory(name="Mine"), FacilityFactory(name="Other")
    reader = UserFactory(role=Role.RADIOLOGIST)
    reader.reading_facilities.add(mine)
    report_received(5, patient_name="MINE^ONE", facility=mine)
    hidden = report_received(5, patient_name="OTHER^ONE", facility=other)
    client = signed_in(reader)
    response = client.get("/reports/?status=all")
    assert rows(response) == ["MINE, ONE"]
    assert (
        "Other" not in response.content.decode().split('id="id_facility"')[1].split("</select>")[0]
    )
    # Asking for the other facility by id is an invalid filter; its report is not found.
    asked = client.get(f"/reports/?facility={other.pk}")
    assert rows(asked) == ["MINE, ONE"]
    assert "(this filter was ignored)" in asked.content.decode()
    assert client.get(f"/reports/{hidden.pk}/").status_code == 404
    assert client.post(f"/reports/{hidden.pk}/claim").status_code == 404
    assert client.get(f"/reports/{hidden.pk}/pdf").status_code == 404


def test_the_worklist_query_count_does_not_grow_with_its_rows(reader):
    client = signed_in(reader)
    assignee = UserFactory(role=Role.RADIOLOGIST)
    for i in range(3):
        report_received(i, assignee=assignee)
    with CaptureQueriesContext(connection) as few:
        assert client.get("/reports/").status_code == 200
    for i in range(30):
        report_received(i, assignee=UserFactory(role=Role.RADIOLOGIST), facility=FacilityFactory())
    with CaptureQueriesContext(connection) as many:
        assert client.get("/reports/").status_code == 200
    assert len(many) == len(few), [q["sql"] for q in many.captured_queries]
    assert len(many) <= 12, [q["sql"] for q in many.captured_queries]
