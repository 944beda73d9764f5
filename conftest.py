"""Fixtures shared by every app's tests: a real Orthanc PACS and DICOM test files.

Django is not set up when this module is imported, so project imports happen inside the
fixtures.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

if TYPE_CHECKING:
    from pacs.local_orthanc import LocalOrthanc
    from pacs.selectors import PacsTarget

# The upload storage folder and the session's one Celery worker, for every app's tests.
pytest_plugins = ["uploads.tests.fixtures"]

ORTHANC_USERNAME = "relaypacs-test"
ORTHANC_PASSWORD = "test-password"  # a throwaway local test server
# A freshly picked port can be taken by someone else before Orthanc binds it.
ORTHANC_START_ATTEMPTS = 3
ORTHANC_STOP_TIMEOUT_SECONDS = 10

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


def free_tcp_ports(count: int) -> list[int]:
    """Ports free right now: bind to port 0 and let the kernel choose, then release."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class OrthancForTests:
    """A real Orthanc (with DICOMweb) run for the test session, plus inspection helpers.

    The helpers talk to Orthanc directly with requests, not through ``pacs.clients``, so
    the code under test is checked against an independent reading of the PACS.
    """

    def __init__(self, server: LocalOrthanc) -> None:
        self.server = server
        self.process: subprocess.Popen[bytes] | None = None
        self.session = requests.Session()
        self.session.auth = self.auth

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def dicomweb_url(self) -> str:
        return self.server.dicomweb_url

    @property
    def auth(self) -> tuple[str, str]:
        return (self.server.username, self.server.password)

    def target(self, **changes: Any) -> PacsTarget:
        """A PacsTarget for this Orthanc (DICOMweb and REST); ``changes`` override fields."""
        from pacs.selectors import PacsTarget

        target = PacsTarget(
            key="test:orthanc",
            name="Test Orthanc",
            dicomweb_url=self.dicomweb_url,
            orthanc_url=self.url,
            username=self.server.username,
            password=self.server.password,
            timeout_seconds=30,
        )
        return replace(target, **changes)

    def settings_overrides(self) -> dict[str, Any]:
        """PACS_* settings making this Orthanc the environment-configured PACS, e.g.
        ``for name, value in orthanc.settings_overrides().items(): setattr(settings, name, value)``.
        """
        return {
            "PACS_DICOMWEB_URL": self.dicomweb_url,
            "PACS_ORTHANC_URL": self.url,
            "PACS_USERNAME": self.server.username,
            "PACS_PASSWORD": self.server.password,
            "PACS_TOKEN": "",
            "PACS_CA_BUNDLE": "",
            "PACS_CLIENT_CERT": "",
            "PACS_CLIENT_KEY": "",
        }

    def start(self) -> None:
        """Start (or restart) Orthanc on the same ports with the same stored data."""
        if self.process is not None and self.process.poll() is None:
            return
        self.process = self.server.start()

    def stop(self, *, graceful: bool = False) -> None:
        """Stop Orthanc; the PACS is then unreachable until ``start()``.

        By default it is killed, like a crashed or unplugged PACS, which is also instant;
        a graceful stop takes Orthanc about 3.5 s. Stored data survives either way.
        """
        if self.process is None:
            return
        if graceful:
            self.process.terminate()
        else:
            self.process.kill()
        try:
            self.process.wait(timeout=ORTHANC_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None
        self.session.close()  # drop kept-alive connections to the old process

    def _get(self, path: str, **kwargs: Any) -> Any:
        response = self.session.get(f"{self.url}{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()

    def sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs of every instance Orthanc holds."""
        return {
            item["MainDicomTags"]["SOPInstanceUID"]
            for item in self._get("/instances", params={"expand": ""})
        }

    def instance_id(self, sop_instance_uid: str) -> str | None:
        response = self.session.post(f"{self.url}/tools/lookup", data=sop_instance_uid, timeout=30)
        response.raise_for_status()
        ids = [item["ID"] for item in response.json() if item["Type"] == "Instance"]
        return ids[0] if ids else None

    def instance_file(self, sop_instance_uid: str) -> bytes:
        """The bytes Orthanc stored for a SOP Instance UID; KeyError if it has none."""
        orthanc_id = self.instance_id(sop_instance_uid)
        if orthanc_id is None:
            raise KeyError(sop_instance_uid)
        response = self.session.get(f"{self.url}/instances/{orthanc_id}/file", timeout=60)
        response.raise_for_status()
        return response.content

    def clear(self) -> None:
        """Delete everything Orthanc stores (test isolation)."""
        for patient_id in self._get("/patients"):
            self.session.delete(f"{self.url}/patients/{patient_id}", timeout=30).raise_for_status()


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
