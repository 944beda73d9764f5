"""A real Orthanc PACS for tests, importable by any test module (the root conftest
cannot be imported by name: frontend/tests_e2e has a conftest module too).

Django is not set up when this module is imported, so project imports happen inside
the methods.
"""

from __future__ import annotations

import socket
import subprocess
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import requests

if TYPE_CHECKING:
    from pacs.local_orthanc import LocalOrthanc
    from pacs.selectors import PacsTarget

ORTHANC_USERNAME = "relaypacs-test"
ORTHANC_PASSWORD = "test-password"  # a throwaway local test server
# A freshly picked port can be taken by someone else before Orthanc binds it.
ORTHANC_START_ATTEMPTS = 3
ORTHANC_STOP_TIMEOUT_SECONDS = 10


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
