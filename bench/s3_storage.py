"""Peak RSS of processing a large upload in S3 mode (issue 16: memory stays flat).

A synthetic CT study (random pixels, about ``--megabytes`` MB in 4 MiB instances) is
uploaded through the real services (``upload_init``, ``chunk_store`` in 1 MiB chunks,
``upload_complete``) into a bucket of moto's S3 server (its own process, spoken to over
HTTP), then processed in this process by ``upload_process`` (SHA-256 check of every
file, DICOM inspection), then read back once more as forwarding reads it
(``open_member``, 1 MiB blocks). A thread samples this process's RSS every 20 ms; the
figures are the peaks above the RSS before each phase, and the S3 requests the phases
made (counted with botocore's event hooks).

Not part of ``make test`` (minutes, and hundreds of MB in moto's memory). SQLite and the
embedded broker in a temporary DATA_DIR; nothing is delivered to a PACS.

Usage: ``.venv/bin/python bench/s3_storage.py [--megabytes 500]``
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CHUNK = 1024 * 1024
INSTANCE_BYTES = 4 * 1024 * 1024


class PeakRss:
    """The highest RSS of this process seen while the block runs, sampled every 20 ms."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = 0
        self.start = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self.start = self.process.memory_info().rss
        self.peak = self.start
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=int, default=500)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="relaypacs-bench-s3-"))
    from uploads.tests.s3_server import start_s3_server

    server = start_s3_server(work)
    try:
        os.environ.update(
            {
                "DJANGO_SETTINGS_MODULE": "relaypacs.settings.dev",
                "DATA_DIR": str(work / "data"),
                "CELERY_BROKER_URL": "filesystem://",
                "UPLOAD_FSYNC": "false",
                **server.env(),
            }
        )
        os.environ.pop("DATABASE_URL", None)
        run(work, args.megabytes, server)
    finally:
        server.stop()


def run(work: Path, megabytes: int, server: object) -> None:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from accounts.models import Approval, User
    from uploads import storage
    from uploads.models import UploadFile, UploadSession
    from uploads.services import upload_process
    from uploads.services.chunks import chunk_store
    from uploads.services.ingest import ManifestFile, UploadInit, upload_complete, upload_init
    from uploads.storage import s3
    from uploads.tests.helpers import content_md5
    from uploads.tests.synthetic import write_study

    instances = max(1, megabytes * 1_000_000 // INSTANCE_BYTES)
    paths = write_study(work / "study", instances=instances, instance_bytes=INSTANCE_BYTES)
    total = sum(p.stat().st_size for p in paths)
    owner = User.objects.create_user(username="bench", password="bench-only-password")  # noqa: S106
    User.objects.filter(pk=owner.pk).update(approval=Approval.APPROVED)
    owner.refresh_from_db()

    requests: Counter[str] = Counter()
    s3.client().meta.events.register(
        "before-call.s3.*", lambda model, **_: requests.update([model.name])
    )

    def files() -> list[ManifestFile]:
        return [
            ManifestFile(
                name=p.name,
                size=p.stat().st_size,
                sha256=hashlib.sha256(p.read_bytes()).hexdigest(),
            )
            for p in paths
        ]

    session = upload_init(
        owner=owner,
        request=UploadInit(
            files=files(),
            metadata={},
            clinical_notes="",
            service_level=None,
            chunk_size=CHUNK,
            allow_partial=False,
            force_upload=True,
        ),
    )
    started = time.monotonic()
    with PeakRss() as ingest:
        stream = _concatenated(paths)
        for index in range(session.total_chunks):
            data = stream.read(CHUNK)
            chunk_store(
                session=session,
                index=index,
                body=io.BytesIO(data),
                length=len(data),
                content_md5=content_md5(data),
            )
    ingest_seconds = time.monotonic() - started
    ingest_requests = dict(requests)
    requests.clear()
    upload_complete(session=session)
    started = time.monotonic()
    with PeakRss() as processing:
        assert upload_process(upload_id=session.id), UploadSession.objects.get(pk=session.id).error
    process_seconds = time.monotonic() - started
    process_requests = dict(requests)
    requests.clear()
    started = time.monotonic()
    with PeakRss() as reading:
        for f in UploadFile.objects.filter(session=session).order_by("position"):
            with storage.open_member(
                upload_id=session.id, offset=f.offset, size=f.size, path=f.path
            ) as reader:
                while reader.read(CHUNK):
                    pass
    read_seconds = time.monotonic() - started
    read_requests = dict(requests)
    storage.stream_delete(upload_id=session.id)

    mib = 1024 * 1024
    chunks = session.total_chunks
    print(
        f"S3 mode, moto server over HTTP: {total / 1e6:.0f} MB, {instances} instances, {chunks} chunks of 1 MiB"
    )
    for name, peak, seconds, counted in [
        ("ingest (chunk_store)", ingest, ingest_seconds, ingest_requests),
        ("processing (upload_process)", processing, process_seconds, process_requests),
        ("forwarding read (open_member)", reading, read_seconds, read_requests),
    ]:
        print(
            f"  {name}: {seconds:.1f} s, RSS before {peak.start / mib:.0f} MiB, "
            f"peak {peak.peak / mib:.0f} MiB (+{(peak.peak - peak.start) / mib:.0f} MiB); "
            f"S3 requests {counted} = {sum(counted.values()) / chunks:.2f} per chunk"
        )


def _concatenated(paths: list[Path]) -> io.RawIOBase:
    """The files one after another as one stream, read block by block from disk."""

    class Joined(io.RawIOBase):
        def __init__(self) -> None:
            self.files = iter(paths)
            self.current = open(next(self.files), "rb")  # noqa: SIM115

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            while True:
                read = self.current.readinto(buffer)
                if read:
                    return read
                self.current.close()
                following = next(self.files, None)
                if following is None:
                    return 0
                self.current = open(following, "rb")  # noqa: SIM115

    return io.BufferedReader(Joined(), buffer_size=CHUNK)  # type: ignore[return-value]


if __name__ == "__main__":
    main()
