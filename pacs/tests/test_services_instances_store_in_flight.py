"""instances_store with several STOW-RS batches on the wire at once."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable

import pytest

from pacs.services import InstanceOutcome, InstanceSource, instances_store

# A batch that waits for another one gives up after this long (the test then fails).
WAIT_SECONDS = 10


class Watched:
    """InstanceSources whose streams are recorded: which were opened, and are all closed."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.streams: list[io.BytesIO] = []
        self.lock = threading.Lock()

    def source(self, dicom_file, before_open: Callable[[], None] | None = None) -> InstanceSource:
        data = dicom_file.path.read_bytes()

        def open_stream() -> io.BytesIO:
            if before_open is not None:
                before_open()
            stream = io.BytesIO(data)
            with self.lock:
                self.opened.append(dicom_file.sop_instance_uid)
                self.streams.append(stream)
            return stream

        return InstanceSource(
            sop_instance_uid=dicom_file.sop_instance_uid,
            study_instance_uid=dicom_file.study_instance_uid,
            size=len(data),
            open=open_stream,
        )


def one_per_batch(settings) -> None:
    """Batches of one instance each: every instance is larger than the byte bound."""
    settings.PACS_STOW_BATCH_BYTES = 1


def test_the_second_batch_is_sent_while_the_first_is_still_on_the_wire(
    orthanc_clean, dicom_test_files, settings
):
    files = dicom_test_files[:4]
    one_per_batch(settings)
    watched = Watched()
    second_started = threading.Event()
    first = watched.source(files[0], before_open=lambda: second_started.wait(WAIT_SECONDS))
    second = watched.source(files[1], before_open=second_started.set)
    rest = [watched.source(f) for f in files[2:]]

    outcomes = instances_store(
        target=orthanc_clean.target(), instances=[first, second, *rest], in_flight=2
    )

    assert second_started.is_set()
    assert all(o.stored for o in outcomes)
    assert [o.sop_instance_uid for o in outcomes] == [f.sop_instance_uid for f in files]
    assert orthanc_clean.sop_instance_uids() == {f.sop_instance_uid for f in files}
    assert all(stream.closed for stream in watched.streams)


def test_outcomes_are_reported_in_order_in_the_callers_thread(
    orthanc_clean, dicom_test_files, settings
):
    files = dicom_test_files[:7]
    one_per_batch(settings)
    watched = Watched()
    reported: list[tuple[int, list[InstanceOutcome]]] = []

    instances_store(
        target=orthanc_clean.target(),
        instances=[watched.source(f) for f in files],
        on_batch=lambda outcomes: reported.append((threading.get_ident(), outcomes)),
        in_flight=3,
    )

    assert {thread for thread, _ in reported} == {threading.get_ident()}
    assert [[o.sop_instance_uid for o in batch] for _, batch in reported] == [
        [f.sop_instance_uid] for f in files
    ]


def test_an_error_in_on_batch_stops_the_delivery_and_closes_every_stream(
    orthanc_clean, dicom_test_files, settings
):
    files = dicom_test_files[:8]
    one_per_batch(settings)
    watched = Watched()

    def lease_lost(outcomes: list[InstanceOutcome]) -> None:
        raise RuntimeError("lease lost")

    with pytest.raises(RuntimeError, match="lease lost"):
        instances_store(
            target=orthanc_clean.target(),
            instances=[watched.source(f) for f in files],
            on_batch=lease_lost,
            in_flight=2,
        )

    # The first batch, and the one sent beside it; nothing was started after the error.
    assert len(watched.opened) <= 2
    assert all(stream.closed for stream in watched.streams)


def test_batches_in_flight_fall_back_to_rest_when_stow_is_missing(
    orthanc_clean, dicom_test_files, settings
):
    files = dicom_test_files[:5]
    one_per_batch(settings)
    watched = Watched()
    target = orthanc_clean.target(dicomweb_url=f"{orthanc_clean.url}/no-dicomweb-here")

    outcomes = instances_store(
        target=target, instances=[watched.source(f) for f in files], in_flight=2
    )

    assert all(o.stored for o in outcomes)
    assert all(o.retrieve_url.startswith(f"{orthanc_clean.url}/instances/") for o in outcomes)
    assert orthanc_clean.sop_instance_uids() == {f.sop_instance_uid for f in files}
    assert all(stream.closed for stream in watched.streams)


def test_large_instances_in_flight_are_streamed_without_holding_them(
    orthanc_clean, synthetic_dicom, settings
):
    psutil = pytest.importorskip("psutil")
    import gc

    one_per_batch(settings)
    bigs = [synthetic_dicom(rows=3000, columns=5000) for _ in range(3)]  # 30 MB each
    sources = [
        InstanceSource(
            sop_instance_uid=big.sop_instance_uid,
            study_instance_uid=big.study_instance_uid,
            size=big.size,
            open=lambda path=big.path: path.open("rb"),
        )
        for big in bigs
    ]
    process = psutil.Process()
    gc.collect()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            done.wait(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        outcomes = instances_store(target=orthanc_clean.target(), instances=sources, in_flight=2)
    finally:
        done.set()
        sampler.join()

    assert all(o.stored for o in outcomes)
    growth = peak - baseline
    assert growth < 24 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB for 3 x 30 MB"


def test_a_stow_body_declares_exactly_the_bytes_it_streams(dicom_test_files, to_source):
    from pacs.clients.dicomweb import DicomwebClient

    sources = [to_source(f) for f in dicom_test_files[:3]]

    body = DicomwebClient._multipart_body(sources, "boundary")

    assert len(body) == sum(len(block) for block in body)


def test_the_heartbeat_beats_while_a_slow_batch_is_on_the_wire(
    orthanc_clean, dicom_test_files, settings, monkeypatch
):
    """A lease renewed only per batch would lapse on a slow link: the caller's heartbeat
    runs before each batch and every HEARTBEAT_SECONDS while batches are on the wire."""
    import time

    from pacs import services

    monkeypatch.setattr(services, "HEARTBEAT_SECONDS", 0.05)
    files = dicom_test_files[:3]
    one_per_batch(settings)
    watched = Watched()
    slow = watched.source(files[0], before_open=lambda: time.sleep(0.5))
    beats: list[float] = []

    instances_store(
        target=orthanc_clean.target(),
        instances=[slow, *(watched.source(f) for f in files[1:])],
        heartbeat=lambda: beats.append(time.monotonic()),
    )

    assert len(beats) >= 5  # 3 before the batches, several during the slow one
    assert max(b - a for a, b in zip(beats, beats[1:], strict=False)) < 0.45


def test_a_failing_heartbeat_stops_the_delivery(orthanc_clean, dicom_test_files, settings):
    files = dicom_test_files[:5]
    one_per_batch(settings)
    watched = Watched()
    calls = []

    class LeaseLost(Exception):
        pass

    def heartbeat() -> None:
        calls.append(1)
        if len(calls) == 2:
            raise LeaseLost

    with pytest.raises(LeaseLost):
        instances_store(
            target=orthanc_clean.target(),
            instances=[watched.source(f) for f in files],
            heartbeat=heartbeat,
            in_flight=1,
        )
    assert len(watched.opened) == 1  # nothing started after the lease was lost
    assert all(stream.closed for stream in watched.streams)


def test_a_redirect_on_a_streamed_body_is_refused_with_the_address(orthanc_clean, dicom_test_files):
    """requests would resend the used-up body to the new address and hang: refuse it."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pacs.errors import PacsRejected

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(308)
            self.send_header("Location", orthanc_clean.dicomweb_url + "/studies")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        target = orthanc_clean.target(
            dicomweb_url=f"http://127.0.0.1:{server.server_address[1]}/dicom-web", orthanc_url=""
        )
        watched = Watched()
        with pytest.raises(PacsRejected) as refused:
            instances_store(target=target, instances=[watched.source(dicom_test_files[0])])
        assert "redirects" in refused.value.detail and "/dicom-web/studies" in refused.value.detail
        assert orthanc_clean.sop_instance_uids() == set()
    finally:
        server.shutdown()
        server.server_close()
