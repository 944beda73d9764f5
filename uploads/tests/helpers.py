"""Client-side helpers for tests: build a manifest and send an upload like the PWA does."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pydicom.data
from pydicom import dcmread

PYDICOM_DATA = Path(pydicom.data.__file__).parent

# pydicom's bundled files with distinct SOP Instance UIDs and consistent file meta: CT, MR,
# US, SR, ECG; explicit little and big endian, deflate, JPEG baseline, JPEG 2000; and
# non-ASCII character sets (Arabic, Greek, Hebrew, Japanese, Korean, Russian, UTF-8).
SAMPLE_FILES = [
    "test_files/CT_small.dcm",
    "test_files/examples_overlay.dcm",
    "test_files/ExplVR_BigEnd.dcm",
    "test_files/693_J2KI.dcm",
    "test_files/SC_rgb_jpeg_dcmtk.dcm",
    "test_files/examples_jpeg2k.dcm",
    "test_files/image_dfl.dcm",
    "test_files/test-SR.dcm",
    "test_files/waveform_ecg.dcm",
    "charset_files/chrArab.dcm",
    "charset_files/chrGreek.dcm",
    "charset_files/chrHbrw.dcm",
    "charset_files/chrH31.dcm",
    "charset_files/chrKoreanMulti.dcm",
    "charset_files/chrRuss.dcm",
    "charset_files/chrX1.dcm",
]


def sample_paths(names: Iterable[str] = SAMPLE_FILES) -> list[Path]:
    return [PYDICOM_DATA / n for n in names]


def sop_uid(path: Path) -> str:
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(paths: list[Path], **extra: Any) -> dict[str, Any]:
    return {
        "files": [
            {"name": p.name, "size": p.stat().st_size, "sha256": sha256_file(p)} for p in paths
        ],
        **extra,
    }


def stream_bytes(paths: list[Path]) -> bytes:
    return b"".join(p.read_bytes() for p in paths)


def chunks_of(data: bytes, chunk_size: int) -> list[bytes]:
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]


def content_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def iter_file_chunks(paths: list[Path], chunk_size: int) -> Iterable[tuple[int, bytes]]:
    """The upload stream's chunks, read from disk file by file (like Blob.slice)."""
    buffer = b""
    index = 0
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(chunk_size):
                buffer += block
                while len(buffer) >= chunk_size:
                    yield index, buffer[:chunk_size]
                    buffer = buffer[chunk_size:]
                    index += 1
    if buffer:
        yield index, buffer


def put_chunk(send: Callable[..., Any], upload_id: str, index: int, data: bytes, token: str) -> Any:
    return send(
        f"/api/v1/upload/{upload_id}/chunk?index={index}",
        data=data,
        content_type="application/octet-stream",
        HTTP_CONTENT_MD5=content_md5(data),
        HTTP_AUTHORIZATION=f"Bearer {token}",
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_without(*names: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in names}


class HttpUploader:
    """Drives the upload API over real HTTP, as a client app does."""

    def __init__(self, base: str, access: str, chunk_size: int) -> None:
        import requests

        self.base = base
        self.chunk_size = chunk_size
        self.http = requests.Session()
        self.access = access

    def init(self, paths: list[Path], **extra: Any) -> dict[str, Any]:
        response = self.http.post(
            f"{self.base}/api/v1/upload/init",
            json=manifest(paths, chunk_size=self.chunk_size, **extra),
            headers={"Authorization": f"Bearer {self.access}"},
            timeout=30,
        )
        assert response.status_code == 201, response.text
        upload: dict[str, Any] = response.json()
        upload["headers"] = {"Authorization": f"Bearer {upload['upload_token']}"}
        return upload

    def put_chunk(self, upload: dict[str, Any], index: int, data: bytes) -> int:
        import requests

        # A session per call: several threads may send chunks at once.
        return requests.put(
            f"{self.base}/api/v1/upload/{upload['upload_id']}/chunk?index={index}",
            data=data,
            headers={
                **upload["headers"],
                "Content-MD5": content_md5(data),
                "Content-Type": "application/octet-stream",
            },
            timeout=30,
        ).status_code

    def send(self, upload: dict[str, Any], paths: list[Path]) -> None:
        for index, data in iter_file_chunks(paths, self.chunk_size):
            assert self.put_chunk(upload, index, data) == 200

    def complete(self, upload: dict[str, Any]) -> None:
        response = self.http.post(
            f"{self.base}/api/v1/upload/{upload['upload_id']}/complete",
            headers=upload["headers"],
            timeout=30,
        )
        assert response.status_code == 202, response.text

    def status(self, upload: dict[str, Any]) -> dict[str, Any]:
        response = self.http.get(
            f"{self.base}/api/v1/upload/{upload['upload_id']}/status",
            headers=upload["headers"],
            timeout=30,
        )
        result: dict[str, Any] = response.json()
        return result

    def wait(self, upload: dict[str, Any], states: set[str], timeout: float = 90) -> dict[str, Any]:
        import time

        deadline = time.monotonic() + timeout
        status = self.status(upload)
        while status["state"] not in states and time.monotonic() < deadline:
            time.sleep(0.3)
            status = self.status(upload)
        return status


# The real RAR archives of the project's shared fixtures (read their README): beside the
# checkout as ../shared, as on the build machines, or where RELAYPACS_SHARED_DIR says.
SHARED_DIR = Path(
    os.environ.get("RELAYPACS_SHARED_DIR") or Path(__file__).resolve().parents[3] / "shared"
)


def rar_fixture(name: str) -> Path:
    """The shared RAR fixture ``name``; the test is skipped, saying why, without them."""
    import pytest

    path = SHARED_DIR / "fixtures" / "rar" / name
    if not path.is_file():
        pytest.skip(f"the shared RAR fixtures are not at {path.parent} (set RELAYPACS_SHARED_DIR)")
    return path
