"""Beat's daily backup (uploads.management.backups.backup_scheduled) on the real
PostgreSQL test database: into a folder and into a bucket (the moto S3 server), keeping
BACKUP_KEEP, never pruning after a failure, counted, logged and audited; and the bucket
streaming itself (multipart, a producer that fails)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from prometheus_client import REGISTRY

from accounts.models import AuditEvent, AuditOutcome
from uploads.management import backup_bucket, backups
from uploads.management.backup_bucket import BucketPlace

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]


def _count(outcome: str) -> float:
    return REGISTRY.get_sample_value("relaypacs_backups_total", {"outcome": outcome}) or 0.0


def test_beat_runs_the_backup_daily_at_backup_schedule():
    entry = django_settings.CELERY_BEAT_SCHEDULE["backup-daily"]
    assert entry["task"] == "uploads.tasks.backup_scheduled_task"
    schedule = entry["schedule"]
    assert (schedule.hour, schedule.minute) == ({2}, {30})  # the default, 02:30 UTC
    from uploads import tasks

    assert tasks.backup_scheduled_task.name == entry["task"]


@pytest.mark.parametrize("value", ["25:00", "2am", "02:30:00"])
def test_a_malformed_backup_schedule_stops_start_up_naming_the_variable(value):
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=REPO,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "relaypacs.settings.dev",
            "BACKUP_SCHEDULE": value,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "The environment variable BACKUP_SCHEDULE is malformed" in done.stderr
    assert value not in done.stderr.split("malformed", 1)[1]


def test_backup_schedule_off_schedules_nothing():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; "
            "print('backup-daily' in settings.CELERY_BEAT_SCHEDULE)",
        ],
        cwd=REPO,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "relaypacs.settings.dev",
            "BACKUP_SCHEDULE": "off",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.stdout.strip() == "False", done.stderr


def test_the_default_target_is_data_dir_backups_or_the_products_bucket(settings, tmp_path):
    settings.BACKUP_TARGET = ""
    settings.UPLOAD_STORAGE = "local"
    settings.DATA_DIR = tmp_path
    assert backups.backup_target_default() == str(tmp_path / "backups")
    settings.UPLOAD_STORAGE, settings.S3_BUCKET = "s3", "the-bucket"
    assert backups.backup_target_default() == "s3://the-bucket/backups/"
    settings.BACKUP_TARGET = "s3://elsewhere/nightly"
    assert backups.backup_target_default() == "s3://elsewhere/nightly"
    target = backups.backup_target_parse(target="s3://elsewhere/nightly")
    assert target.place == BucketPlace(bucket="elsewhere", prefix="nightly/")
    with pytest.raises(backups.ApplicationError) as refused:
        backups.backup_target_parse(target="s3:///nightly")
    assert refused.value.code == "backup_target_invalid"


def test_daily_backups_into_a_folder_keep_the_newest_n_and_are_audited(
    settings, tmp_path, report_store
):
    target = tmp_path / "backups"
    settings.BACKUP_TARGET, settings.BACKUP_KEEP = str(target), 2
    written_before = _count("written")
    made = [backups.backup_scheduled() for _ in range(3)]
    assert all(made)
    kept = sorted(p.name for p in target.iterdir())
    assert kept == sorted(Path(str(m)).name for m in made[1:])  # the oldest went
    assert backups.backups_at(target=str(target)) == made[1:]
    newest = Path(str(made[-1]))
    manifest = json.loads((newest / backups.MANIFEST).read_text())
    assert set(manifest["files"]) == {"database.dump", "reports.tar"}
    assert manifest["report_files"] == {
        "4/v1-report.pdf": hashlib.sha256(b"%PDF-1.7 a signed report").hexdigest()
    }
    assert _count("written") == written_before + 3
    events = AuditEvent.objects.filter(action="export", object_type="backup")
    assert events.count() == 3
    assert {e.outcome for e in events} == {AuditOutcome.SUCCESS}
    assert events.first().object_id == newest.name  # type: ignore[union-attr]


def test_a_failed_backup_prunes_nothing_and_is_logged_counted_and_audited(
    settings, tmp_path, report_store, monkeypatch, caplog
):
    target = tmp_path / "backups"
    settings.BACKUP_TARGET, settings.BACKUP_KEEP = str(target), 2
    made = [backups.backup_scheduled() for _ in range(2)]
    assert all(made)
    failed_before = _count("failed")
    # A host whose PostgreSQL client went missing: pg_dump cannot run. With BACKUP_KEEP=1,
    # a prune after it would remove the older of the two.
    settings.BACKUP_KEEP = 1
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools-here"))
    with caplog.at_level(logging.ERROR, logger="uploads.management.backups"):
        assert backups.backup_scheduled() is None
    # Both kept, nothing partial.
    assert sorted(p.name for p in target.iterdir()) == sorted(Path(str(m)).name for m in made)
    assert _count("failed") == failed_before + 1
    failure = AuditEvent.objects.filter(action="export", object_type="backup").first()
    assert failure is not None and failure.outcome == AuditOutcome.SERIOUS_FAILURE
    assert failure.detail == {"scheduled": True, "target": "folder", "code": "backup_tool_missing"}
    assert "The scheduled backup to" in caplog.text and "backup_tool_missing" in caplog.text
    assert "a signed report" not in caplog.text


def test_a_second_delivery_while_a_backup_runs_does_nothing(settings, tmp_path, report_store):
    from django.core.cache import cache

    settings.BACKUP_TARGET = str(tmp_path / "backups")
    failed_before = _count("failed")
    cache.set(backups.SCHEDULED_RUNNING_KEY, True, 60)  # the first delivery, still running
    try:
        assert backups.backup_scheduled() is None
    finally:
        cache.delete(backups.SCHEDULED_RUNNING_KEY)
    assert not (tmp_path / "backups").exists()
    assert _count("failed") == failed_before
    assert backups.backup_scheduled() is not None  # once it ended, the next one runs


# --- into the bucket ---------------------------------------------------------------------


def _objects(server: Any, prefix: str) -> dict[str, bytes]:
    client = server.client()
    return {
        key: client.get_object(Bucket=server.bucket, Key=key)["Body"].read()
        for key in server.keys(prefix)
    }


def test_daily_backups_into_the_products_bucket_keep_the_newest_n_with_sums(
    s3_settings, settings, tmp_path
):
    settings.REPORT_STORAGE_DIR = tmp_path / "unused"
    settings.BACKUP_TARGET, settings.BACKUP_KEEP = "", 2
    client = s3_settings.client()
    for key in s3_settings.keys("reports/") + s3_settings.keys("backups/"):
        client.delete_object(Bucket=s3_settings.bucket, Key=key)
    client.put_object(Bucket=s3_settings.bucket, Key="reports/9/v2-x.pdf", Body=b"%PDF report")
    made = [backups.backup_scheduled() for _ in range(3)]
    assert all(
        m and m.startswith(f"s3://{s3_settings.bucket}/backups/relaypacs-backup-") for m in made
    )
    stored = _objects(s3_settings, "backups/")
    names = {key.split("/")[1] for key in stored}
    assert names == {str(m).rsplit("/", 1)[1] for m in made[1:]}
    for name in names:
        manifest = json.loads(stored[f"backups/{name}/manifest.json"])
        assert set(manifest["files"]) == {"database.dump", "reports.tar"}
        for file, digest in manifest["files"].items():
            assert hashlib.sha256(stored[f"backups/{name}/{file}"]).hexdigest() == digest
        assert stored[f"backups/{name}/database.dump"].startswith(b"PGDMP")
        assert manifest["report_files"] == {
            "9/v2-x.pdf": hashlib.sha256(b"%PDF report").hexdigest()
        }
    event = AuditEvent.objects.filter(action="export", object_type="backup").first()
    assert event is not None and event.detail["target"] == "bucket"
    assert not s3_settings.multipart_uploads("backups/")


def test_a_backup_into_a_missing_bucket_fails_with_a_sentence_and_prunes_nothing(
    s3_settings, settings, tmp_path
):
    settings.REPORT_STORAGE_DIR = tmp_path / "unused"
    with pytest.raises(backups.ApplicationError) as failed:
        backups.backup_run(target="s3://no-such-bucket-relaypacs/backups", keep=1)
    assert failed.value.code == "backup_bucket_unavailable"
    assert "s3://no-such-bucket-relaypacs/backups/" in failed.value.message
    assert "NoSuchBucket" in failed.value.message


def test_a_failed_backup_into_a_bucket_prunes_nothing_there(
    s3_settings, settings, tmp_path, monkeypatch
):
    settings.REPORT_STORAGE_DIR = tmp_path / "unused"
    target = f"s3://{s3_settings.bucket}/kept/"
    settings.BACKUP_TARGET, settings.BACKUP_KEEP = target, 2
    made = [backups.backup_scheduled() for _ in range(2)]
    assert all(made)
    before = _objects(s3_settings, "kept/")
    # The same target; pg_dump cannot run. With BACKUP_KEEP=1, a prune after it would
    # delete the older backup.
    settings.BACKUP_KEEP = 1
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools-here"))
    assert backups.backup_scheduled() is None
    assert _objects(s3_settings, "kept/") == before
    assert not s3_settings.multipart_uploads("kept/")
    for key in before:
        s3_settings.client().delete_object(Bucket=s3_settings.bucket, Key=key)


def test_streaming_into_the_bucket_uses_multipart_parts_and_a_failed_producer_leaves_nothing(
    s3_settings, monkeypatch
):
    monkeypatch.setattr(backup_bucket, "PART_BYTES", 5 * 1024 * 1024)  # S3's minimum part
    place = BucketPlace(bucket=s3_settings.bucket, prefix="stream-test/")
    block = os.urandom(1024 * 1024)

    def twelve_mib(fd: int) -> None:
        for _ in range(12):
            os.write(fd, block)

    digest = backup_bucket.stream_upload(place=place, key="stream-test/big", produce=twelve_mib)
    head = s3_settings.client().head_object(Bucket=s3_settings.bucket, Key="stream-test/big")
    assert head["ContentLength"] == 12 * len(block)
    assert head["ETag"].strip('"').endswith("-3")  # three parts of 5, 5 and 2 MiB
    assert digest == hashlib.sha256(block * 12).hexdigest()

    def fails_half_way(fd: int) -> None:
        for _ in range(7):
            os.write(fd, block)
        raise OSError("the producer broke")

    with pytest.raises(OSError, match="the producer broke"):
        backup_bucket.stream_upload(place=place, key="stream-test/broken", produce=fails_half_way)
    assert s3_settings.keys("stream-test/") == ["stream-test/big"]
    assert not s3_settings.multipart_uploads("stream-test/")
    s3_settings.client().delete_object(Bucket=s3_settings.bucket, Key="stream-test/big")


# --- backups cut short, failed prunes, the lock --------------------------------------------

OLD = "relaypacs-backup-20200101T000000000000Z"
OLDER = "relaypacs-backup-20191231T000000000000Z"


def test_backups_cut_short_in_a_bucket_are_deleted_once_a_day_old_never_while_written(
    s3_settings, settings, tmp_path
):
    from datetime import UTC, datetime, timedelta

    settings.REPORT_STORAGE_DIR = tmp_path / "unused"
    client, bucket = s3_settings.client(), s3_settings.bucket
    for key in s3_settings.keys("cut/"):
        client.delete_object(Bucket=bucket, Key=key)
    place = BucketPlace(bucket=bucket, prefix="cut/")
    whole = backups.backup_run(target=f"s3://{bucket}/cut/", keep=5).rsplit("/", 1)[1]
    # A worker killed after database.dump was written and its cleanup failed: no manifest.
    client.put_object(Bucket=bucket, Key=f"cut/{OLD}/database.dump", Body=b"PGDMP patient")
    # A worker killed mid-upload: an unfinished multipart upload (moto dates it 2010).
    client.create_multipart_upload(Bucket=bucket, Key=f"cut/{OLDER}/database.dump")
    # A backup being written now.
    now = datetime.now(tz=UTC)
    running = f"relaypacs-backup-{now.strftime(backup_bucket.NAME_TIME)}"
    client.put_object(Bucket=bucket, Key=f"cut/{running}/database.dump", Body=b"PGDMP")

    removed = backups._bucket_prune(place=place, keep=5, written=whole, now=now)

    # Only the multipart upload is a day old by every measure; the object of OLD was
    # written a moment ago (LastModified), and `running` is new.
    assert removed == [OLDER]
    assert not s3_settings.multipart_uploads("cut/")
    assert {key.split("/")[1] for key in s3_settings.keys("cut/")} == {whole, OLD, running}

    removed = backups._bucket_prune(place=place, keep=5, written=whole, now=now + timedelta(days=2))

    assert sorted(removed) == sorted([OLD, running])
    assert {key.split("/")[1] for key in s3_settings.keys("cut/")} == {whole}
    assert backups.backups_at(target=f"s3://{bucket}/cut/") == [f"s3://{bucket}/cut/{whole}"]
    for key in s3_settings.keys("cut/"):
        client.delete_object(Bucket=bucket, Key=key)


def test_deleting_a_backup_in_a_bucket_aborts_its_unfinished_multipart_uploads(s3_settings):
    client, bucket = s3_settings.client(), s3_settings.bucket
    place = BucketPlace(bucket=bucket, prefix="abort/")
    client.create_multipart_upload(Bucket=bucket, Key=f"abort/{OLD}/database.dump")
    client.create_multipart_upload(Bucket=bucket, Key=f"abort/{OLDER}/database.dump")
    backup_bucket.backup_delete(place=place, name=OLD)
    assert [u["Key"] for u in s3_settings.multipart_uploads("abort/")] == [
        f"abort/{OLDER}/database.dump"
    ]
    backup_bucket.backup_delete(place=place, name=OLDER)
    assert not s3_settings.multipart_uploads("abort/")


def test_the_sweeps_multipart_abort_covers_the_products_backups_prefix(s3_settings, settings):
    from datetime import UTC, datetime

    from django.utils import timezone

    from uploads import storage

    client, bucket = s3_settings.client(), s3_settings.bucket
    key = f"backups/{OLD}/database.dump"
    client.create_multipart_upload(Bucket=bucket, Key=key)
    # moto dates every multipart upload 2010-11-10: a cut-off before that aborts nothing.
    assert storage.multipart_uploads_abort(older_than=datetime(2001, 1, 1, tzinfo=UTC)) == 0
    assert [u["Key"] for u in s3_settings.multipart_uploads("backups/")] == [key]
    window = timezone.now() - settings.UPLOAD_RESUME_WINDOW
    assert storage.multipart_uploads_abort(older_than=window) == 1
    assert not s3_settings.multipart_uploads("backups/")


def test_partial_folders_of_backups_cut_short_go_once_a_day_old(tmp_path):
    target = tmp_path / "backups"
    target.mkdir()
    old = target / f".{OLD}.partial"
    fresh = target / ".relaypacs-backup-20990101T000000000000Z.partial"
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "database.dump").write_bytes(b"PGDMP patient")
    day_and_more = 2 * 24 * 3600
    stamp = old.stat().st_mtime - day_and_more
    for path in (old / "database.dump", old):
        os.utime(path, (stamp, stamp))

    assert backups.backups_prune(target=target, keep=5) == [old]
    assert [p.name for p in target.iterdir()] == [fresh.name]  # being written: kept
    backups._rmtree_gone_ok(old)  # already gone: fine


def test_a_prune_that_fails_leaves_the_written_backup_a_success(
    settings, tmp_path, report_store, s3_settings, monkeypatch, caplog
):
    """Fault injection: the prune's deletion fails (another run removed the folder; S3
    answering 503) after the backup was written."""
    folder = tmp_path / "backups"
    settings.BACKUP_TARGET, settings.BACKUP_KEEP = str(folder), 1
    assert backups.backup_scheduled() is not None

    def vanished(**kwargs: Any) -> list[Path]:
        raise FileNotFoundError("removed by another run")

    monkeypatch.setattr(backups, "backups_prune", vanished)
    written_before, failed_before = _count("written"), _count("failed")
    with caplog.at_level(logging.WARNING, logger="uploads.management.backups"):
        where = backups.backup_scheduled()
    assert where is not None and (Path(where) / backups.MANIFEST).is_file()
    assert "could not all be removed" in caplog.text

    bucket_target = f"s3://{s3_settings.bucket}/prune-fails/"
    settings.BACKUP_TARGET = bucket_target
    assert backups.backup_scheduled() is not None
    place = backups.backup_target_parse(target=bucket_target).place
    assert place is not None

    def unavailable(**kwargs: Any) -> None:
        raise backup_bucket.bucket_unavailable(place, OSError("503"), what="cleaned up")

    monkeypatch.setattr(backup_bucket, "backup_delete", unavailable)
    where = backups.backup_scheduled()
    assert where is not None and where.startswith(bucket_target)
    assert len(backups.backups_at(target=bucket_target)) == 2  # nothing pruned, both whole
    assert _count("written") == written_before + 3 and _count("failed") == failed_before
    monkeypatch.undo()
    for key in s3_settings.keys("prune-fails/"):
        s3_settings.client().delete_object(Bucket=s3_settings.bucket, Key=key)


def test_the_lock_is_renewed_and_only_its_owner_releases_it(monkeypatch):
    import time

    from django.core.cache import cache

    monkeypatch.setattr(backups, "SCHEDULED_LOCK_SECONDS", 1)
    monkeypatch.setattr(backups, "SCHEDULED_LOCK_RENEW_SECONDS", 0.2)
    with backups._scheduled_lock() as held:
        assert held
        token = cache.get(backups.SCHEDULED_RUNNING_KEY)
        assert isinstance(token, str) and token
        with backups._scheduled_lock() as second:
            assert not second  # another delivery
        time.sleep(1.6)  # longer than the lock's time: renewed meanwhile
        assert cache.get(backups.SCHEDULED_RUNNING_KEY) == token
    assert cache.get(backups.SCHEDULED_RUNNING_KEY) is None

    with backups._scheduled_lock() as held:
        assert held
        # Ours ran out and another delivery took it: its lock is not ours to delete.
        cache.set(backups.SCHEDULED_RUNNING_KEY, "another-delivery", 60)
    assert cache.get(backups.SCHEDULED_RUNNING_KEY) == "another-delivery"
    cache.delete(backups.SCHEDULED_RUNNING_KEY)


def test_a_failure_that_cannot_be_audited_still_does_not_raise(
    settings, tmp_path, report_store, monkeypatch, caplog
):
    """Fault injection: the audit trail's database refuses the write."""
    from accounts.services import audit

    def refused(**kwargs: Any) -> None:
        raise RuntimeError("the database is gone")

    monkeypatch.setattr(audit, "audit_record", refused)
    settings.BACKUP_TARGET = str(tmp_path / "backups")
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools-here"))
    with caplog.at_level(logging.ERROR, logger="uploads.management.backups"):
        assert backups.backup_scheduled() is None
    assert "could not be audited" in caplog.text
    monkeypatch.setenv("PATH", os.environ["PATH"])
