"""Run a local Orthanc (Debian's package) with the DICOMweb plugin as a child process.

Used by ``manage.py serve`` for the embedded default and by the test suite's fixture.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

ORTHANC_BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
# Orthanc answers /system about a second after start; ten times that covers a slow disk.
READY_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class LocalOrthanc:
    data_dir: Path
    http_port: int
    dicom_port: int
    username: str
    password: str
    name: str = "RELAYPACS"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": self.name,
            "StorageDirectory": str(self.data_dir / "storage"),
            "IndexDirectory": str(self.data_dir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.name[:16],
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.username),
            "RegisteredUsers": {self.username: self.password} if self.username else {},
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 5,
        }
        path = self.data_dir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self, *, log_path: Path | None = None) -> subprocess.Popen[bytes]:
        """Start Orthanc and wait until it answers; raises RuntimeError if it does not."""
        config = self.write_config()
        log = open(log_path or self.data_dir / "orthanc.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            [ORTHANC_BINARY, str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with code {process.returncode} at start; "
                    f"see {log.name} (is port {self.http_port} or {self.dicom_port} taken?)"
                )
            if self.is_up():
                return process
            time.sleep(0.1)
        process.kill()
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {READY_TIMEOUT_SECONDS}s")

    def is_up(self) -> bool:
        try:
            auth = (self.username, self.password) if self.username else None
            return requests.get(f"{self.url}/system", auth=auth, timeout=1).ok
        except requests.RequestException:
            return False
