"""Backups into a bucket reach S3 with BACKUP_S3_* where set, each in place of its S3_*
namesake (uploads.management.backup_bucket), while uploads and reports keep S3_*. On the
real PostgreSQL test database and the S3 server (moto), reached through a relay that
can go down."""

from __future__ import annotations

import pytest

from uploads.management import backup_bucket, backups
from uploads.tests.s3_server import S3Outage

pytestmark = pytest.mark.django_db


def test_backup_s3_settings_override_the_upload_buckets_for_backups_only(
    s3_settings, settings, tmp_path
):
    for key in s3_settings.keys("backups/"):
        s3_settings.client().delete_object(Bucket=s3_settings.bucket, Key=key)
    relay = S3Outage(s3_settings.endpoint_url)  # the "backup S3 service"
    try:
        settings.BACKUP_TARGET, settings.BACKUP_KEEP = "", 7  # s3://S3_BUCKET/backups/
        settings.BACKUP_S3_ENDPOINT_URL = relay.endpoint_url
        settings.BACKUP_S3_REGION = "eu-west-1"
        settings.BACKUP_S3_ACCESS_KEY_ID = "backups-only-key"
        settings.BACKUP_S3_SECRET_ACCESS_KEY = "backups-only-secret"  # noqa: S105
        client = backup_bucket._client()
        assert client.meta.endpoint_url == relay.endpoint_url
        assert client.meta.region_name == "eu-west-1"
        # botocore keeps the credentials it signs with here (no public accessor).
        assert client._request_signer._credentials.access_key == "backups-only-key"
        from uploads import storage

        assert storage.s3_client().meta.endpoint_url == s3_settings.endpoint_url

        # The backup goes through BACKUP_S3_ENDPOINT_URL: with it down, it fails (the
        # report store, on S3_ENDPOINT_URL, was read), and nothing is written.
        relay.down()
        assert backups.backup_scheduled() is None
        relay.up()
        assert not s3_settings.keys("backups/")

        written = backups.backup_scheduled()
        assert written and written.startswith(f"s3://{s3_settings.bucket}/backups/")
        assert backups.backups_at(target=backups.backup_target_default()) == [written]

        # Unset, backups use the upload storage's client again.
        for name in ("ENDPOINT_URL", "REGION", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY"):
            setattr(settings, f"BACKUP_S3_{name}", "")
        assert backup_bucket._client() is storage.s3_client()
        # A single override falls back to S3_* for the rest.
        settings.BACKUP_S3_ACCESS_KEY_ID = "backups-only-key"
        one = backup_bucket._client()
        assert one.meta.endpoint_url == s3_settings.endpoint_url
        assert one._request_signer._credentials.access_key == "backups-only-key"
        assert (
            one._request_signer._credentials.secret_key == s3_settings.env()["S3_SECRET_ACCESS_KEY"]
        )
    finally:
        relay.close()
        client = s3_settings.client()
        for key in s3_settings.keys("backups/"):
            client.delete_object(Bucket=s3_settings.bucket, Key=key)
