"""The report store (reports.store): one contract on local disk and in S3 (a real S3
protocol server, moto), the PDFs and logos that live in it, its backup, and that the
uploads' sweeps never touch it."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import subprocess
import tarfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.utils import timezone
from PIL import Image

from accounts.models import Role
from accounts.tests.factories import UserFactory
from reports import store
from reports.models import Letterhead
from reports.services import pdf, transitions
from uploads import storage as upload_storage
from uploads.management import backups
from uploads.services import maintenance

from .factories import ReportFactory

pytestmark = pytest.mark.django_db


def _empty_report_prefix(server: Any) -> None:
    client = server.client()
    for key in server.keys(store.KEY_PREFIX):
        client.delete_object(Bucket=server.bucket, Key=key)


@pytest.fixture
def local_disk(settings: Any, tmp_path: Path) -> Path:
    """S3 mode off (whatever the environment says); REPORT_STORAGE_DIR is ``tmp_path``."""
    folder = tmp_path / "reports"
    settings.REPORT_STORAGE_DIR = folder
    settings.UPLOAD_STORAGE = "local"
    return folder


@pytest.fixture
def s3_store(s3_settings: Any, settings: Any, tmp_path: Path) -> Any:
    """S3 mode on the session's S3 server with an empty ``reports/`` prefix; the local
    REPORT_STORAGE_DIR points at a folder that must stay empty."""
    settings.REPORT_STORAGE_DIR = tmp_path / "reports-on-disk"
    _empty_report_prefix(s3_settings)
    return s3_settings


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> str:
    request.getfixturevalue("local_disk" if request.param == "local" else "s3_store")
    return str(request.param)


def _stored_bytes(relative: str) -> bytes:
    with store.open(relative=relative) as handle:
        return handle.read()


# --- the contract, on both backends -----------------------------------------------------


def test_a_file_is_written_once_and_read_back(backend):
    assert store.backend_name() == backend
    assert not store.exists(relative="7/v1-abc.pdf")
    store.write_once(relative="7/v1-abc.pdf", data=b"%PDF-1.7 first")
    assert store.exists(relative="7/v1-abc.pdf")
    assert store.size(relative="7/v1-abc.pdf") == len(b"%PDF-1.7 first")
    assert _stored_bytes("7/v1-abc.pdf") == b"%PDF-1.7 first"
    assert list(store.files()) == [("7/v1-abc.pdf", 14)]


def test_the_same_bytes_again_are_accepted_and_other_bytes_never_replace_them(backend):
    data = b"%PDF-1.7 signed version"
    relative = f"8/v1-{hashlib.sha256(data).hexdigest()[:16]}.pdf"
    store.write_once(relative=relative, data=data)
    store.write_once(relative=relative, data=io.BytesIO(data))  # a retried render: no-op
    with pytest.raises(store.ReportStoreConflict):
        store.write_once(relative=relative, data=b"%PDF-1.7 something else")
    assert _stored_bytes(relative) == data
    assert [name for name, _ in store.files()] == [relative]  # no temporary file left


def test_a_reader_streams_and_seeks_without_reading_the_whole_file(backend):
    data = bytes(range(256)) * (3 * 4096 + 17)  # about 3 MiB, not a multiple of a block
    store.write_once(relative="big/file.bin", data=io.BytesIO(data))
    with store.open(relative="big/file.bin") as handle:
        assert isinstance(handle, io.BufferedReader)
        assert handle.read(store.READ_BUFFER) == data[: store.READ_BUFFER]
        assert handle.seek(0, io.SEEK_END) == len(data)
        handle.seek(1_000_003)
        assert handle.read(5000) == data[1_000_003:1_005_003]
        handle.seek(0)
        copied = b"".join(iter(lambda: handle.read(store.READ_BUFFER), b""))
    assert hashlib.sha256(copied).digest() == hashlib.sha256(data).digest()


def test_delete_is_idempotent_and_a_missing_file_is_file_not_found(backend):
    store.write_once(relative="9/v1-x.pdf", data=b"%PDF")
    store.delete(relative="9/v1-x.pdf")
    store.delete(relative="9/v1-x.pdf")
    assert not store.exists(relative="9/v1-x.pdf")
    with pytest.raises(FileNotFoundError):
        store.open(relative="9/v1-x.pdf")
    with pytest.raises(FileNotFoundError):
        store.size(relative="9/v1-x.pdf")


@pytest.mark.parametrize("name", ["../outside.pdf", "/etc/passwd", "a//b", "a/./b", "", "a\\b"])
def test_it_refuses_names_outside_the_store(backend, name):
    with pytest.raises(ValueError):
        store.write_once(relative=name, data=b"x")


def test_s3_mode_writes_under_the_reports_prefix_and_nothing_on_disk(s3_store, settings):
    store.write_once(relative="1/v1-0123456789abcdef.pdf", data=b"%PDF-1.7")
    assert s3_store.keys(store.KEY_PREFIX) == ["reports/1/v1-0123456789abcdef.pdf"]
    head = s3_store.client().head_object(
        Bucket=s3_store.bucket, Key="reports/1/v1-0123456789abcdef.pdf"
    )
    assert head["ContentType"] == "application/pdf"
    assert head["Metadata"]["sha256"] == hashlib.sha256(b"%PDF-1.7").hexdigest()
    assert not Path(settings.REPORT_STORAGE_DIR).exists()


# --- PDFs and logos ---------------------------------------------------------------------


def _signed_and_rendered(**report: object) -> tuple[Any, Any]:
    radiologist = UserFactory(role=Role.RADIOLOGIST, full_name="Dr Ada Reader")
    row = ReportFactory(**report)
    transitions.report_claim(report_id=row.pk, actor=radiologist)
    version = transitions.report_sign(
        report_id=row.pk, actor=radiologist, findings="Clear lungs.", impression="Normal."
    )
    return row, pdf.report_version_render(version_id=version.pk)


def test_a_signed_reports_pdf_in_s3_mode_lands_in_the_bucket_and_downloads_byte_identical(
    s3_store, settings, api_for
):
    report, version = _signed_and_rendered()
    key = f"reports/{report.pk}/v1-{version.pdf_sha256[:16]}.pdf"
    assert version.pdf_path == key.removeprefix("reports/")
    assert s3_store.keys(f"reports/{report.pk}/") == [key]
    in_bucket = s3_store.client().get_object(Bucket=s3_store.bucket, Key=key)["Body"].read()
    assert hashlib.sha256(in_bucket).hexdigest() == version.pdf_sha256
    assert not Path(settings.REPORT_STORAGE_DIR).exists()  # nothing on this node's disk

    download = api_for(UserFactory(role=Role.ADMIN)).get(f"/api/v1/reports/{report.pk}/download")
    assert download.status_code == 200 and download["Content-Type"] == "application/pdf"
    assert int(download["Content-Length"]) == version.pdf_size
    assert b"".join(download.streaming_content) == in_bucket


def test_a_pdf_missing_from_the_bucket_is_a_sentence_not_a_crash(s3_store, api_for):
    report, version = _signed_and_rendered()
    store.delete(relative=version.pdf_path)
    answer = api_for(UserFactory(role=Role.ADMIN)).get(f"/api/v1/reports/{report.pk}/download")
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert error["code"] == "report_pdf_missing" and error["message"].endswith(".")


def test_a_download_while_the_bucket_is_unreachable_is_a_503_with_a_sentence(
    s3_store, settings, api_for
):
    from uploads.tests.s3_server import S3Outage

    report, _ = _signed_and_rendered()
    outage = S3Outage(s3_store.endpoint_url)
    try:
        settings.S3_ENDPOINT_URL = outage.endpoint_url
        outage.down()
        answer = api_for(UserFactory(role=Role.ADMIN)).get(f"/api/v1/reports/{report.pk}/download")
    finally:
        outage.close()
    assert answer.status_code == 503 and outage.refused > 0
    error = answer.json()["error"]
    assert error["code"] == "report_store_unavailable"
    assert error["message"].endswith(".") and error["hint"].endswith(".")


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def test_a_letterhead_logo_is_stored_in_the_store_and_printed_without_any_fetch(
    backend, settings, caplog, tmp_path
):
    report = ReportFactory()
    letterhead = Letterhead.objects.create(facility=report.facility, address="1 Clinic Road")
    letterhead.logo.save("clinic logo.png", ContentFile(_png(123, 45)), save=True)
    assert store.exists(relative=f"letterheads/{letterhead.logo.name}")
    assert [name for name, _ in store.files()] == [f"letterheads/{letterhead.logo.name}"]
    if backend == "s3":
        assert not Path(settings.REPORT_STORAGE_DIR).exists()

    with caplog.at_level(logging.WARNING, logger="weasyprint"):
        _, version = _signed_and_rendered(facility=report.facility)
    # WeasyPrint logs every resource its fetcher refused or could not load.
    assert not [r for r in caplog.records if r.name.startswith("weasyprint")], caplog.text
    rendered = tmp_path / "rendered.pdf"
    rendered.write_bytes(_stored_bytes(version.pdf_path))
    images = subprocess.run(
        ["pdfimages", "-list", str(rendered)], check=True, capture_output=True, text=True
    ).stdout.splitlines()[2:]
    assert [row.split()[3:5] for row in images] == [["123", "45"]], images


def test_the_renderer_takes_only_the_logo_data_url_it_was_given():
    logo = "data:image/png;base64," + base64.b64encode(_png(2, 2)).decode()
    fetcher = pdf._local_fetcher([pdf.FONTS_DIR], data_urls=(logo,))
    assert fetcher.fetch(logo) is not None
    for url in ("data:text/plain,hello", "http://example.org/logo.png", "file:///etc/passwd"):
        with pytest.raises(ValueError):
            fetcher.fetch(url)


# --- the uploads' sweeps leave the report store alone -----------------------------------


def test_the_uploads_orphan_sweep_and_deletions_leave_report_objects_alone(s3_store):
    client = s3_store.client()
    store.write_once(relative="5/v1-0123456789abcdef.pdf", data=b"%PDF-1.7 a report")
    store.write_once(relative="letterheads/logos/logo.png", data=_png(4, 4))
    # A report object under a name that looks like an upload id, and a multipart upload
    # of the report store in flight: neither is the uploads' to sweep.
    lookalike = uuid.uuid4()
    store.write_once(relative=f"{lookalike}/stream", data=b"not an upload")
    pending = client.create_multipart_upload(Bucket=s3_store.bucket, Key="reports/big.bin")
    # An orphaned upload (no row), which the sweep must remove.
    orphan = uuid.uuid4()
    upload_storage.stream_create(upload_id=orphan, size=3)
    upload_storage.stream_write(upload_id=orphan, offset=0, data=b"abc")
    before = s3_store.keys(store.KEY_PREFIX)

    later = timezone.now() + maintenance.ORPHAN_GRACE + timedelta(days=30)
    maintenance.upload_folders_sweep(now=later)
    upload_storage.stream_delete(upload_id=lookalike)
    upload_storage.multipart_uploads_abort(older_than=later)
    upload_storage.work_reset(upload_id=lookalike)

    assert s3_store.keys(f"uploads/{orphan}/") == []  # the sweep did run
    assert s3_store.keys(store.KEY_PREFIX) == before
    assert [u["UploadId"] for u in s3_store.multipart_uploads("reports/")] == [pending["UploadId"]]
    client.abort_multipart_upload(
        Bucket=s3_store.bucket, Key="reports/big.bin", UploadId=pending["UploadId"]
    )
    assert _stored_bytes("5/v1-0123456789abcdef.pdf") == b"%PDF-1.7 a report"


# --- backups ------------------------------------------------------------------------------


def test_a_backup_in_s3_mode_copies_the_reports_prefix_and_restores_it(s3_store, tmp_path):
    report, version = _signed_and_rendered()
    store.write_once(relative="letterheads/logos/logo.png", data=_png(8, 8))
    before = {name: _stored_bytes(name) for name, _ in store.files()}
    assert set(before) == {version.pdf_path, "letterheads/logos/logo.png"}

    folder = backups.backup_create(target=tmp_path / "backups", keep=2)
    manifest = json.loads((folder / backups.MANIFEST).read_text())
    assert manifest["report_store"] == "s3"
    assert manifest["report_files"] == {
        name: hashlib.sha256(data).hexdigest() for name, data in before.items()
    }
    with tarfile.open(folder / "reports.tar") as tar:
        assert sorted(tar.getnames()) == sorted(before)

    _empty_report_prefix(s3_store)  # the bucket's report store is lost
    assert backups.restore_plan(backup=folder).report_files == 0
    backups._reports_tar_restore(backup=folder, digests=manifest["report_files"])
    assert {name: _stored_bytes(name) for name, _ in store.files()} == before
    assert backups.restore_plan(backup=folder).report_files == 2  # a restore now refused


def test_a_backup_of_a_local_store_restores_into_the_bucket(local_disk, tmp_path, request):
    store.write_once(relative="3/v1-0123456789abcdef.pdf", data=b"%PDF-1.7 on disk")
    folder = backups.backup_create(target=tmp_path / "backups", keep=1)
    manifest = json.loads((folder / backups.MANIFEST).read_text())
    assert manifest["report_store"] == "local"

    server = request.getfixturevalue("s3_store")  # the same node, moved to S3
    backups._reports_tar_restore(backup=folder, digests=manifest["report_files"])
    assert server.keys(store.KEY_PREFIX) == ["reports/3/v1-0123456789abcdef.pdf"]
    assert _stored_bytes("3/v1-0123456789abcdef.pdf") == b"%PDF-1.7 on disk"


def test_a_restore_refuses_a_report_file_that_differs_from_the_manifest(local_disk, tmp_path):
    store.write_once(relative="4/v1-0123456789abcdef.pdf", data=b"%PDF-1.7 kept")
    folder = backups.backup_create(target=tmp_path / "backups", keep=1)
    store.delete(relative="4/v1-0123456789abcdef.pdf")
    with pytest.raises(backups.ApplicationError) as refused:
        backups._reports_tar_restore(backup=folder, digests={"4/v1-0123456789abcdef.pdf": "0" * 64})
    assert refused.value.code == "backup_damaged"
    assert list(store.files()) == []
