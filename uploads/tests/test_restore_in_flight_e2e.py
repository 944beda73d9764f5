"""An upload under way when the backup was made, after the database is lost and restored on
a host whose upload bytes are gone too (they are never in a backup): the product, as
`manage.py serve` runs it on the real PostgreSQL, lists every chunk whose bytes are
missing, takes them again, and delivers the study byte-identical into the real Orthanc."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from relaypacs.tests.deploy_support import fresh_postgres_database, postgres_server_url
from uploads.tests.helpers import HttpUploader, iter_file_chunks, sop_uid
from uploads.tests.product import REPO, admin_access_token, manage, running_product
from uploads.tests.synthetic import write_study

pytestmark = pytest.mark.e2e

CHUNK = 256 * 1024


def test_an_upload_in_flight_at_backup_time_resumes_after_a_restore_into_the_pacs(
    tmp_path, orthanc, orthanc_clean
):
    paths = write_study(tmp_path / "study", instances=6, instance_bytes=512 * 1024)
    chunks = list(iter_file_chunks(paths, CHUNK))
    assert len(chunks) >= 12
    with fresh_postgres_database("restore_in_flight") as database_url:
        overrides = {"DATABASE_URL": database_url, "BACKUP_SCHEDULE": "off"}
        with running_product(tmp_path, orthanc, **overrides) as product:
            access = admin_access_token(product.base, product.env)
            client = HttpUploader(product.base, access, CHUNK)
            upload = client.init(paths)
            for index, data in chunks[:4]:
                assert client.put_chunk(upload, index, data) == 200
            backed_up = manage(product, "backup", "--target", str(tmp_path / "backups"))
            backup = backed_up.strip().rsplit(" ", 1)[1]
            # Sent after the backup: the restored database never heard of them.
            for index, data in chunks[4:8]:
                assert client.put_chunk(upload, index, data) == 200
            assert client.status(upload)["missing_chunks"] == list(range(8, len(chunks)))
            env = product.env

        # The disaster: the database and the upload bytes are gone.
        name = database_url.rsplit("/", 1)[1]
        admin = postgres_server_url().replace("postgres://", "postgresql://")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        shutil.rmtree(Path(env["DATA_DIR"]) / "uploads")

        restored = subprocess.run(
            [sys.executable, "manage.py", "restore", backup],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert (
            "1 uploads were under way at backup time: 1 lost 4 chunks that their apps will "
            "send again, and 0 could not go on" in restored.stdout
        ), restored.stdout

        with running_product(tmp_path, orthanc, **overrides) as product:
            client = HttpUploader(product.base, access, CHUNK)  # same keys: same tokens
            status = client.status(upload)
            assert status["state"] == "receiving", status
            assert status["missing_chunks"] == list(range(len(chunks))), status
            assert status["bytes_received"] == 0
            for index, data in chunks:  # the app sends what the status asks for
                assert client.put_chunk(upload, index, data) == 200
            client.complete(upload)
            final = client.wait(upload, {"completed", "failed"}, timeout=180)
            assert final["state"] == "completed", final
        for path in paths:
            assert orthanc_clean.instance_file(sop_uid(path)) == path.read_bytes()
