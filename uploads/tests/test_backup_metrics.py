"""The daily backup's gauges on GET /metrics (uploads.metrics.backup_families), read by
RelayPacsBackupMissing: on the real PostgreSQL test database, after real backups (pg_dump)
into a temporary folder, with BACKUP_SCHEDULE off, and on a database with no backup yet."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from accounts.models import AuditEvent, AuditOutcome
from accounts.services.audit import audit_record
from uploads.management import backups
from uploads.metrics import backup_families

pytestmark = pytest.mark.django_db

LAST = "relaypacs_backup_last_success_timestamp_seconds"
SCHEDULED = "relaypacs_backup_scheduled"
CREATED = "relaypacs_database_created_timestamp_seconds"


def scraped(client: Client) -> dict[str, list[float]]:
    """The values of the backup families in a real scrape of /metrics (none: no sample)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    found = {
        family.name: [sample.value for sample in family.samples]
        for family in text_string_to_metric_families(response.content.decode())
    }
    assert "relaypacs_metrics_collector_errors" not in found
    return {name: found[name] for name in (LAST, SCHEDULED, CREATED)}


def test_a_database_without_a_backup_shows_none_and_when_it_was_created(client: Client) -> None:
    # A user's export of their own data is an "export" too: it is not a backup.
    audit_record(action="export", facility_id=None, object_type="user", object_id="1")
    first_migration = MigrationRecorder(connection).migration_qs.order_by("applied").first()
    assert first_migration is not None

    values = scraped(client)

    assert values[LAST] == []
    assert values[SCHEDULED] == [1.0]  # the default: daily at 02:30
    assert values[CREATED] == [first_migration.applied.timestamp()]
    assert values[CREATED][0] <= time.time()


def test_a_scheduled_backup_sets_the_time_of_the_last_backup(
    client: Client, settings: Any, tmp_path: Path, report_store: Path
) -> None:
    settings.BACKUP_TARGET = str(tmp_path / "backups")
    before = time.time()
    written = backups.backup_scheduled()
    after = time.time()
    assert written is not None and Path(written).is_dir()

    values = scraped(client)

    event = AuditEvent.objects.get(action="export", object_type="backup")
    assert values[LAST] == [event.occurred_at.timestamp()]
    assert before <= values[LAST][0] <= after


def test_a_failed_scheduled_backup_leaves_the_time_of_the_last_one(
    client: Client, settings: Any, tmp_path: Path, report_store: Path, monkeypatch: Any
) -> None:
    settings.BACKUP_TARGET = str(tmp_path / "backups")
    assert backups.backup_scheduled() is not None
    written_at = scraped(client)[LAST]
    # pg_dump cannot run: the backup fails and is audited as a serious failure.
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools-here"))
    assert backups.backup_scheduled() is None
    assert AuditEvent.objects.filter(outcome=AuditOutcome.SERIOUS_FAILURE).count() == 1

    assert scraped(client)[LAST] == written_at


def test_a_backup_by_hand_is_written_but_does_not_count_as_the_schedule_running(
    client: Client, tmp_path: Path, report_store: Path
) -> None:
    target = tmp_path / "by-hand"
    call_command("backup", "--target", str(target), "--keep", "2")
    assert [p.name for p in target.iterdir() if p.name.startswith(backups.PREFIX)]

    # It writes nothing into the database (a restore of it gives back the very tables it
    # copied), so the alert keeps saying the daily backup has not run.
    assert scraped(client)[LAST] == []


def test_backup_schedule_off_shows_backups_are_not_scheduled(client: Client, settings: Any) -> None:
    settings.BACKUP_SCHEDULE = "off"
    values = scraped(client)
    assert values[SCHEDULED] == [0.0]
    assert len(values[CREATED]) == 1


def test_the_backup_gauges_cost_two_queries(django_assert_num_queries: Any) -> None:
    with django_assert_num_queries(2):
        families = list(backup_families())
    assert [family.name for family in families] == [SCHEDULED, LAST, CREATED]
