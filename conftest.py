"""Fixtures shared by every app's tests: a real Orthanc PACS and DICOM test files.

Django is not set up when this module is imported, so project imports happen inside the
fixtures.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pacs.tests.orthanc_server import (
    ORTHANC_PASSWORD,
    ORTHANC_START_ATTEMPTS,
    ORTHANC_USERNAME,
    OrthancForTests,
    free_tcp_ports,
)

__all__ = ["ORTHANC_PASSWORD", "ORTHANC_USERNAME", "OrthancForTests", "free_tcp_ports"]

# The upload storage folder and the session's one Celery worker, for every app's tests.
pytest_plugins = ["uploads.tests.fixtures"]


# pydicom test files Orthanc 1.10 refuses although pydicom reads them (body in implicit
# VR under an explicit VR transfer syntax): good hostile input, not a good "valid" file.
ORTHANC_REJECTS = frozenset({"SC_rgb_jpeg.dcm"})
# When several pydicom files share a SOP Instance UID, these names win.
PREFERRED_TEST_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "rtplan.dcm",
    "JPEG2000.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancForTests]:
    """A real Orthanc 1.10 + DICOMweb on free local ports, with basic auth, for the session."""
    from pacs.local_orthanc import LocalOrthanc

    data_dir = tmp_path_factory.mktemp("orthanc")
    last_error: Exception | None = None
    for _ in range(ORTHANC_START_ATTEMPTS):
        http_port, dicom_port = free_tcp_ports(2)
        helper = OrthancForTests(
            LocalOrthanc(
                data_dir=data_dir,
                http_port=http_port,
                dicom_port=dicom_port,
                username=ORTHANC_USERNAME,
                password=ORTHANC_PASSWORD,
            )
        )
        try:
            helper.start()
        except RuntimeError as exc:
            last_error = exc
            continue
        try:
            yield helper
        finally:
            helper.stop()
        return
    pytest.fail(f"Orthanc did not start: {last_error}")


@pytest.fixture
def orthanc_clean(orthanc: OrthancForTests) -> OrthancForTests:
    """The session's Orthanc, running and empty."""
    orthanc.start()
    orthanc.clear()
    return orthanc


@dataclass(frozen=True)
class DicomFile:
    path: Path
    sop_instance_uid: str
    study_instance_uid: str
    size: int


def _dicom_file(path: Path) -> DicomFile | None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, KeyError):
        return None
    if "TransferSyntaxUID" not in dataset.file_meta:
        return None
    sop_uid = str(dataset.get("SOPInstanceUID", "") or "")
    study_uid = str(dataset.get("StudyInstanceUID", "") or "")
    if not sop_uid or not study_uid:
        return None
    return DicomFile(path, sop_uid, study_uid, path.stat().st_size)


@pytest.fixture(scope="session")
def dicom_test_files() -> list[DicomFile]:
    """pydicom's bundled Part 10 test files, one per SOP Instance UID, all of which
    Orthanc accepts (about 47 files, 0.5 to 320 KB; no download needed)."""
    import warnings

    import pydicom.data

    root = Path(pydicom.data.__file__).parent
    paths = sorted(
        [*root.glob("test_files/*.dcm"), *root.glob("charset_files/*.dcm")],
        key=lambda p: (p.name not in PREFERRED_TEST_FILES, p.name),
    )
    chosen: dict[str, DicomFile] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns loudly about its hostile files
        for path in paths:
            if path.name in ORTHANC_REJECTS:
                continue
            dicom_file = _dicom_file(path)
            if dicom_file is not None and dicom_file.sop_instance_uid not in chosen:
                chosen[dicom_file.sop_instance_uid] = dicom_file
    return list(chosen.values())


@pytest.fixture
def synthetic_dicom(tmp_path: Path) -> Any:
    """Factory writing a Secondary Capture Part 10 file with random 16-bit pixels.

    ``synthetic_dicom(rows=64, columns=64, study_instance_uid=None, ...) -> DicomFile``.
    The pixel data is written in 1 MiB blocks, so even a file of hundreds of MB costs
    no memory to make.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    def make(
        *,
        rows: int = 64,
        columns: int = 64,
        study_instance_uid: str | None = None,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
        instance_number: int = 1,
    ) -> DicomFile:
        sop_uid = sop_instance_uid or generate_uid()
        study_uid = study_instance_uid or generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset = pydicom.Dataset()
        dataset.file_meta = meta
        dataset.SOPClassUID = SecondaryCaptureImageStorage
        dataset.SOPInstanceUID = sop_uid
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series_instance_uid or generate_uid()
        dataset.PatientName = "Synthetic^Test"
        dataset.PatientID = "RELAYPACS-TEST"
        dataset.Modality = "OT"
        dataset.ConversionType = "WSD"
        dataset.InstanceNumber = instance_number
        dataset.SamplesPerPixel = 1
        dataset.PhotometricInterpretation = "MONOCHROME2"
        dataset.Rows = rows
        dataset.Columns = columns
        dataset.BitsAllocated = 16
        dataset.BitsStored = 16
        dataset.HighBit = 15
        dataset.PixelRepresentation = 0
        path = tmp_path / f"{sop_uid}.dcm"
        pixel_bytes = rows * columns * 2
        with path.open("wb") as out:
            pydicom.dcmwrite(out, dataset, enforce_file_format=True)
            # (7FE0,0010) Pixel Data, explicit VR OW with a 32-bit length: the last element.
            out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_bytes))
            remaining = pixel_bytes
            while remaining:
                block = os.urandom(min(remaining, 1024 * 1024))
                out.write(block)
                remaining -= len(block)
        return DicomFile(path, sop_uid, study_uid, path.stat().st_size)

    return make


# After a transactional test the database is flushed (TRUNCATE of every table) while the
# session's Celery worker may still be finishing that test's last task (a subscriber
# filing a report once the upload completed): PostgreSQL then ends one of the two as a
# deadlock. The worker's transaction ends either way, so the flush is tried again.
FLUSH_DEADLOCK_ATTEMPTS = 5
FLUSH_DEADLOCK_PAUSE_SECONDS = 0.5


def _is_deadlock(error: BaseException | None) -> bool:
    while error is not None:
        if "deadlock detected" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


@pytest.fixture(scope="session", autouse=True)
def _flush_retried_on_deadlock() -> Iterator[None]:
    import time

    from django.test import TransactionTestCase

    flush = TransactionTestCase._fixture_teardown

    def flush_retried(self: TransactionTestCase) -> None:
        for attempt in range(1, FLUSH_DEADLOCK_ATTEMPTS + 1):
            try:
                flush(self)
                return
            except Exception as exc:
                if attempt == FLUSH_DEADLOCK_ATTEMPTS or not _is_deadlock(exc):
                    raise
                time.sleep(FLUSH_DEADLOCK_PAUSE_SECONDS)

    TransactionTestCase._fixture_teardown = flush_retried  # type: ignore[method-assign]
    try:
        yield
    finally:
        TransactionTestCase._fixture_teardown = flush  # type: ignore[method-assign]


def _uses_database(item: pytest.Item) -> bool:
    fixtures = getattr(item, "fixturenames", ())
    return item.get_closest_marker("django_db") is not None or any(
        name in fixtures for name in ("db", "transactional_db", "live_server")
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With pytest-xdist (`make test`: -n, --dist loadfile) modules are handed to the
    processes in the order of their first test, and pytest-django moved the tests without
    a database to the end: the slow browser and product modules (test_pwa_e2e.py alone
    takes about 6 minutes) would start last and finish alone. End-to-end modules none of
    whose tests use the test database go first instead (the order of the tests that use
    it is kept)."""
    if not getattr(config.option, "numprocesses", None):
        return
    by_module: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_module.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    first = {
        module
        for module, module_items in by_module.items()
        if any(item.get_closest_marker("e2e") for item in module_items)
        and not any(_uses_database(item) for item in module_items)
    }
    # Then, within those and within each of pytest-django's groups of the others (tests
    # in a transaction, then transactional tests, then the rest: that order is kept), the
    # longest modules first (LONGEST_MODULES), so that no long module starts when the rest
    # is nearly done.
    heavy = {module: rank for rank, module in enumerate(LONGEST_MODULES)}

    def key(item: pytest.Item) -> tuple[bool, int, int]:
        module = item.nodeid.split("::", 1)[0]
        group = 0 if module in first else _database_group(item)
        return module not in first, group, heavy.get(module, len(heavy))

    items.sort(key=key)


def _database_group(item: pytest.Item) -> int:
    """pytest-django's order of a test: 0 in a transaction, 1 transactional, 2 no database."""
    fixtures = getattr(item, "fixturenames", ())
    marker = item.get_closest_marker("django_db")
    if marker is not None and (
        marker.kwargs.get("transaction") or marker.kwargs.get("reset_sequences")
    ):
        return 1
    if "transactional_db" in fixtures or "live_server" in fixtures:
        return 1
    return 0 if _uses_database(item) else 2


LONGEST_MODULES = (
    "frontend/tests_e2e/test_pwa_e2e.py",
    "uploads/tests/test_backup_queue.py",
    "relaypacs/tests/test_deploy_backup.py",
    "frontend/tests_e2e/test_account_screens.py",
    "relaypacs/tests/test_deploy_backup_bucket.py",
    "relaypacs/tests/test_beat_lock.py",
    "frontend/tests_e2e/test_pwa_push.py",
    "frontend/tests_e2e/test_pwa_reports.py",
    "relaypacs/tests/test_deploy_compose.py",
    "frontend/tests_e2e/test_first_use.py",
    "uploads/tests/test_chunk_memory_e2e.py",
    "notifications/tests/test_live_e2e.py",
    "uploads/tests/test_serve_e2e.py",
    "relaypacs/tests/test_deploy_nginx.py",
    "frontend/tests_e2e/test_pwa_notifications.py",
    "uploads/tests/test_nodes_e2e.py",
    "uploads/tests/test_restore_in_flight_e2e.py",
    # Modules that use the test database (ordered within their group only).
    "uploads/tests/test_pipeline_e2e.py",
    "uploads/tests/test_delivery_e2e.py",
    "uploads/tests/test_s3_pipeline_e2e.py",
    "uploads/tests/test_redelivery_e2e.py",
    "accounts/tests/test_schema_fuzz.py",
    "uploads/tests/test_chunk_cost.py",
    "notifications/tests/test_stream_races.py",
)
