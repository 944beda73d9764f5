"""The statistics in the admin site: rollups and timelines shown, searched and filtered,
never added, changed or deleted (derived data; ``analytics_rebuild`` rewrites them), and
nothing for staff without the permissions."""

from __future__ import annotations

import datetime
import uuid

import pytest

from accounts.models import User
from accounts.tests.factories import FacilityFactory, UserFactory
from analytics.models import Grain, Outcome, UploadRollup, UploadTimeline

pytestmark = pytest.mark.django_db

ROLLUPS = "/admin/analytics/uploadrollup/"
TIMELINES = "/admin/analytics/uploadtimeline/"


@pytest.fixture
def root(client):
    root = User.objects.create_superuser("root", "root@example.org", "Root-Password-123")
    client.force_login(root)
    return root


@pytest.fixture
def figures():
    north = FacilityFactory(code="north", name="North Clinic")
    south = FacilityFactory(code="south", name="South Clinic")
    ct = UploadRollup.objects.create(
        grain=Grain.DAY,
        day=datetime.date(2026, 11, 3),
        facility=north,
        modality="CT",
        service_level="routine",
        outcome=Outcome.COMPLETED,
        uploads=3,
        bytes=3_000_000,
    )
    mr = UploadRollup.objects.create(
        grain=Grain.MONTH,
        day=datetime.date(2026, 11, 1),
        facility=south,
        modality="MR",
        service_level="stat",
        outcome=Outcome.FAILED,
        uploads=1,
        bytes=10,
    )
    timeline = UploadTimeline.objects.create(upload_id=uuid.uuid4(), pacs_waits=2)
    UploadTimeline.objects.create(upload_id=uuid.uuid4())
    return {"ct": ct, "mr": mr, "timeline": timeline, "north": north}


def shown(client, url):
    page = client.get(url)
    assert page.status_code == 200, url
    return list(page.context["cl"].result_list)


def test_the_lists_and_pages_render_for_a_superuser(client, root, figures):
    assert {r.pk for r in shown(client, ROLLUPS)} == {figures["ct"].pk, figures["mr"].pk}
    assert len(shown(client, TIMELINES)) == 2
    page = client.get(f"{ROLLUPS}{figures['ct'].pk}/change/")
    assert page.status_code == 200 and "North Clinic" in page.content.decode()
    page = client.get(f"{TIMELINES}{figures['timeline'].pk}/change/")
    assert page.status_code == 200 and str(figures["timeline"].upload_id) in page.content.decode()


def test_search_and_filters_narrow_the_rollups(client, root, figures):
    assert [r.modality for r in shown(client, f"{ROLLUPS}?q=north")] == ["CT"]
    assert [r.modality for r in shown(client, f"{ROLLUPS}?grain=month")] == ["MR"]
    assert [r.modality for r in shown(client, f"{ROLLUPS}?outcome=completed")] == ["CT"]
    assert [r.modality for r in shown(client, f"{ROLLUPS}?q=MR")] == ["MR"]
    facility = figures["north"].pk
    assert [r.modality for r in shown(client, f"{ROLLUPS}?facility__id__exact={facility}")] == [
        "CT"
    ]
    upload_id = figures["timeline"].upload_id
    assert [t.upload_id for t in shown(client, f"{TIMELINES}?q={upload_id}")] == [upload_id]


def test_rollups_and_timelines_cannot_be_added_changed_or_deleted(client, root, figures):
    ct, timeline = figures["ct"], figures["timeline"]
    for url in (f"{ROLLUPS}add/", f"{TIMELINES}add/"):
        assert client.get(url).status_code == 403, url
    for url in (f"{ROLLUPS}{ct.pk}/delete/", f"{TIMELINES}{timeline.pk}/delete/"):
        assert client.get(url).status_code == 403, url
    page = client.get(f"{ROLLUPS}{ct.pk}/change/")
    assert not page.context["has_change_permission"]
    assert 'name="_save"' not in page.content.decode()
    client.post(f"{ROLLUPS}{ct.pk}/change/", {"uploads": "99"})
    client.post(ROLLUPS, {"action": "delete_selected", "_selected_action": [ct.pk], "post": "yes"})
    ct.refresh_from_db()
    assert ct.uploads == 3
    assert UploadRollup.objects.count() == 2
    assert "delete_selected" not in client.get(ROLLUPS).content.decode()


def test_staff_without_the_permissions_see_nothing(client, figures):
    user = UserFactory(username="plain-staff")
    User.objects.filter(pk=user.pk).update(is_staff=True)
    client.force_login(user)
    for url in (
        ROLLUPS,
        TIMELINES,
        f"{ROLLUPS}{figures['ct'].pk}/change/",
        f"{TIMELINES}{figures['timeline'].pk}/change/",
    ):
        assert client.get(url).status_code == 403, url
    assert "uploadrollup" not in client.get("/admin/").content.decode()


def _with_role(username, role):
    from accounts.services.roles import user_role_access_apply

    user = UserFactory(username=username, role=role)
    user_role_access_apply(user=user)  # what every service that sets a role calls
    assert not user.is_superuser
    return user


def test_an_administrator_sees_the_figures_and_changes_nothing(client, figures):
    from accounts.models import Role

    client.force_login(_with_role("ada", Role.ADMIN))
    ct, timeline = figures["ct"], figures["timeline"]
    assert {r.pk for r in shown(client, ROLLUPS)} == {ct.pk, figures["mr"].pk}
    assert len(shown(client, TIMELINES)) == 2
    for url in (f"{ROLLUPS}{ct.pk}/change/", f"{TIMELINES}{timeline.pk}/change/"):
        page = client.get(url)
        assert page.status_code == 200, url
        assert not page.context["has_change_permission"], url
    index = client.get("/admin/").content.decode()
    assert ROLLUPS in index and TIMELINES in index
    for url in (
        f"{ROLLUPS}add/",
        f"{TIMELINES}add/",
        f"{ROLLUPS}{ct.pk}/delete/",
        f"{TIMELINES}{timeline.pk}/delete/",
    ):
        assert client.get(url).status_code == 403, url
    client.post(f"{ROLLUPS}{ct.pk}/change/", {"uploads": "99"})
    client.post(ROLLUPS, {"action": "delete_selected", "_selected_action": [ct.pk], "post": "yes"})
    ct.refresh_from_db()
    assert ct.uploads == 3 and UploadRollup.objects.count() == 2


def test_a_radiographer_is_sent_to_the_admin_sign_in(client, figures):
    from accounts.models import Role

    client.force_login(_with_role("rita", Role.RADIOGRAPHER))
    for url in (ROLLUPS, TIMELINES, f"{ROLLUPS}{figures['ct'].pk}/change/"):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url
