from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from pacs.models import DeliveredInstance
from pacs.selectors import delivered_recently
from pacs.services import deliveries_record

pytestmark = pytest.mark.django_db


def test_recorded_deliveries_are_found_per_target_and_window():
    now = timezone.now()
    deliveries_record(
        target_key="env:main",
        instances=[("1.1", "9.1"), ("1.2", "9.1")],
        delivered_at=now - timedelta(days=40),
    )
    deliveries_record(target_key="env:main", instances=[("1.2", "9.1"), ("1.3", "9.2")])
    deliveries_record(target_key="db:7", instances=[("1.1", "9.1")])

    recent = delivered_recently(
        target_key="env:main",
        sop_instance_uids=["1.1", "1.2", "1.3", "1.4"],
        since=now - timedelta(days=30),
    )
    ever = delivered_recently(
        target_key="env:main", sop_instance_uids={"1.1", "1.4"}, since=now - timedelta(days=365)
    )

    assert recent == {"1.2", "1.3"}
    assert ever == {"1.1"}
    assert DeliveredInstance.objects.filter(target_key="env:main").count() == 3


def test_redelivery_updates_the_one_row():
    first = timezone.now() - timedelta(hours=2)
    deliveries_record(target_key="env:main", instances=[("1.1", "9.1")], delivered_at=first)
    deliveries_record(target_key="env:main", instances=[("1.1", "9.1"), ("1.1", "9.1")])

    row = DeliveredInstance.objects.get(target_key="env:main", sop_instance_uid="1.1")
    assert row.delivered_at > first
    assert DeliveredInstance.objects.count() == 1


def test_thousands_of_uids_are_recorded_and_queried_in_batches(django_assert_max_num_queries):
    pairs = [(f"2.25.{n}", "9.9") for n in range(1200)]

    # 3 INSERTs of 500, 3 SELECTs of 500, and the savepoint around the atomic upsert.
    with django_assert_max_num_queries(8):
        deliveries_record(target_key="env:main", instances=pairs)
        found = delivered_recently(
            target_key="env:main",
            sop_instance_uids=(uid for uid, _ in pairs),
            since=timezone.now() - timedelta(minutes=1),
        )

    assert len(found) == 1200
