from __future__ import annotations

import hashlib
import io

import pytest

from pacs.services import (
    InstanceOutcome,
    InstanceSource,
    InstanceSourceError,
    PacsRejected,
    instances_store,
    stow_batches,
)
from pacs.tests.helpers import source_from_bytes

# Looks like Part 10 (preamble + DICM) but is not a data set any PACS can parse.
GARBAGE = b"\0" * 128 + b"DICM" + b"this is not a DICOM data set " * 40
GARBAGE_UID = "1.2.826.0.1.3680043.10.543.999"


def test_all_test_files_are_stored_byte_identical(orthanc_clean, dicom_test_files, to_source):
    sources = [to_source(f) for f in dicom_test_files]
    assert len(sources) >= 40  # CT, MR, RT, SR, JPEG, J2K, JPEG-LS, character sets...

    outcomes = instances_store(target=orthanc_clean.target(), instances=sources)

    assert [o.sop_instance_uid for o in outcomes] == [s.sop_instance_uid for s in sources]
    assert [o for o in outcomes if not o.stored] == []
    assert all(o.retrieve_url and o.sop_instance_uid in o.retrieve_url for o in outcomes)
    assert orthanc_clean.sop_instance_uids() == {s.sop_instance_uid for s in sources}
    for dicom_file in dicom_test_files:
        stored = orthanc_clean.instance_file(dicom_file.sop_instance_uid)
        assert stored == dicom_file.path.read_bytes(), dicom_file.path.name


def test_small_batch_limit_sends_several_batches_in_order(
    orthanc_clean, dicom_test_files, to_source, settings
):
    settings.PACS_STOW_BATCH_BYTES = 20_000
    sources = [to_source(f) for f in dicom_test_files[:8]]
    expected_batches = stow_batches(sources, max_bytes=20_000)
    reported: list[list[InstanceOutcome]] = []

    outcomes = instances_store(
        target=orthanc_clean.target(), instances=sources, on_batch=reported.append
    )

    assert len(expected_batches) >= 3
    assert [[o.sop_instance_uid for o in batch] for batch in reported] == [
        [s.sop_instance_uid for s in batch] for batch in expected_batches
    ]
    assert [o for batch in reported for o in batch] == outcomes
    assert all(o.stored for o in outcomes)
    assert orthanc_clean.sop_instance_uids() == {s.sop_instance_uid for s in sources}


def test_batches_respect_the_byte_limit_and_big_instances_go_alone():
    def sized(uid: str, size: int) -> InstanceSource:
        return InstanceSource(
            sop_instance_uid=uid, study_instance_uid="1.2", size=size, open=io.BytesIO
        )

    sources = [sized("1", 40), sized("2", 50), sized("3", 250), sized("4", 10), sized("5", 90)]

    batches = stow_batches(sources, max_bytes=100)

    assert [[s.sop_instance_uid for s in b] for b in batches] == [["1", "2"], ["3"], ["4", "5"]]
    assert [len(b) for b in stow_batches(sources, max_bytes=10_000, max_instances=2)] == [2, 2, 1]


def test_unparseable_instance_fails_while_the_rest_of_its_batch_is_stored(
    orthanc_clean, dicom_test_files, to_source
):
    good = [to_source(f) for f in dicom_test_files[:3]]
    garbage = source_from_bytes(GARBAGE, sop_instance_uid=GARBAGE_UID)

    outcomes = instances_store(
        target=orthanc_clean.target(), instances=[good[0], garbage, *good[1:]]
    )

    by_uid = {o.sop_instance_uid: o for o in outcomes}
    assert by_uid[GARBAGE_UID].stored is False
    assert "not acknowledged by the pacs" in by_uid[GARBAGE_UID].failure_reason.lower()
    assert all(by_uid[s.sop_instance_uid].stored for s in good)
    assert orthanc_clean.sop_instance_uids() == {s.sop_instance_uid for s in good}


def test_a_batch_of_only_unparseable_instances_gives_failed_outcomes(orthanc_clean):
    garbage = source_from_bytes(GARBAGE, sop_instance_uid=GARBAGE_UID)

    [outcome] = instances_store(target=orthanc_clean.target(), instances=[garbage])

    assert outcome.stored is False
    assert outcome.failure_reason


def test_sending_the_same_instances_twice_stores_them_once(
    orthanc_clean, dicom_test_files, to_source
):
    sources = [to_source(f) for f in dicom_test_files[:5]]
    target = orthanc_clean.target()

    first = instances_store(target=target, instances=sources)
    second = instances_store(target=target, instances=sources)

    assert all(o.stored for o in first + second)
    response = orthanc_clean.session.get(f"{orthanc_clean.url}/statistics", timeout=10)
    assert response.json()["CountInstances"] == len(sources)
    for dicom_file in dicom_test_files[:5]:
        assert orthanc_clean.instance_file(dicom_file.sop_instance_uid) == (
            dicom_file.path.read_bytes()
        )


def test_rest_only_target_stores_byte_identical_and_reports_failures(
    orthanc_clean, dicom_test_files, to_source
):
    sources = [to_source(f) for f in dicom_test_files[:4]]
    garbage = source_from_bytes(GARBAGE, sop_instance_uid=GARBAGE_UID)
    reported: list[list[InstanceOutcome]] = []

    outcomes = instances_store(
        target=orthanc_clean.target(dicomweb_url=""),
        instances=[*sources, garbage],
        on_batch=reported.append,
    )

    assert reported == [outcomes]
    assert [o.stored for o in outcomes] == [True, True, True, True, False]
    assert "could not read" in outcomes[-1].failure_reason
    assert outcomes[0].retrieve_url.startswith(f"{orthanc_clean.url}/instances/")
    for dicom_file in dicom_test_files[:4]:
        assert orthanc_clean.instance_file(dicom_file.sop_instance_uid) == (
            dicom_file.path.read_bytes()
        )


def test_rest_store_refuses_an_instance_claimed_under_another_uid(orthanc_clean, dicom_test_files):
    real = dicom_test_files[0]
    mislabelled = source_from_bytes(
        real.path.read_bytes(), sop_instance_uid="1.2.826.0.1.3680043.10.543.1"
    )

    [outcome] = instances_store(
        target=orthanc_clean.target(dicomweb_url=""), instances=[mislabelled]
    )

    assert outcome.stored is False
    assert "another SOP Instance UID" in outcome.failure_reason


def test_stow_not_available_falls_back_to_orthanc_rest(orthanc_clean, dicom_test_files, to_source):
    sources = [to_source(f) for f in dicom_test_files[:3]]
    target = orthanc_clean.target(dicomweb_url=f"{orthanc_clean.url}/no-dicomweb-here")

    outcomes = instances_store(target=target, instances=sources)

    assert all(o.stored for o in outcomes)
    assert orthanc_clean.sop_instance_uids() == {s.sop_instance_uid for s in sources}


def test_stow_not_available_without_orthanc_url_is_rejected(
    orthanc_clean, dicom_test_files, to_source
):
    target = orthanc_clean.target(
        dicomweb_url=f"{orthanc_clean.url}/no-dicomweb-here", orthanc_url=""
    )

    with pytest.raises(PacsRejected) as caught:
        instances_store(target=target, instances=[to_source(dicom_test_files[0])])

    assert caught.value.http_status == 404


@pytest.mark.parametrize("rest_only", [False, True])
def test_wrong_password_is_rejected_not_retried(
    orthanc_clean, dicom_test_files, to_source, rest_only
):
    target = orthanc_clean.target(password="wrong")
    if rest_only:
        target = orthanc_clean.target(password="wrong", dicomweb_url="")
    reported: list[list[InstanceOutcome]] = []

    with pytest.raises(PacsRejected) as caught:
        instances_store(
            target=target,
            instances=[to_source(f) for f in dicom_test_files[:2]],
            on_batch=reported.append,
        )

    error = caught.value
    assert (error.code, error.status_code, error.http_status) == ("pacs_rejected", 502, 401)
    assert "401" in error.message
    assert "password" in error.hint
    assert reported == []
    assert orthanc_clean.sop_instance_uids() == set()


def test_a_source_shorter_than_its_size_is_a_source_error_and_nothing_is_stored(
    orthanc_clean, dicom_test_files
):
    data = dicom_test_files[0].path.read_bytes()
    short = InstanceSource(
        sop_instance_uid=dicom_test_files[0].sop_instance_uid,
        study_instance_uid=dicom_test_files[0].study_instance_uid,
        size=len(data) + 10,
        open=lambda: io.BytesIO(data),
    )

    with pytest.raises(InstanceSourceError) as caught:
        instances_store(target=orthanc_clean.target(), instances=[short])

    assert "ended after" in caught.value.detail
    assert orthanc_clean.sop_instance_uids() == set()


def test_every_stream_opened_is_closed(orthanc_clean, dicom_test_files):
    opened: list[io.BytesIO] = []

    def opener(data: bytes):
        def open_stream() -> io.BytesIO:
            stream = io.BytesIO(data)
            opened.append(stream)
            return stream

        return open_stream

    sources = [
        InstanceSource(
            sop_instance_uid=f.sop_instance_uid,
            study_instance_uid=f.study_instance_uid,
            size=f.size,
            open=opener(f.path.read_bytes()),
        )
        for f in dicom_test_files[:3]
    ]

    instances_store(target=orthanc_clean.target(), instances=sources)
    instances_store(target=orthanc_clean.target(dicomweb_url=""), instances=sources)

    assert len(opened) == 6
    assert all(stream.closed for stream in opened)


def test_large_instance_is_streamed_without_holding_it_in_memory(orthanc_clean, synthetic_dicom):
    psutil = pytest.importorskip("psutil")
    import gc
    import threading

    big = synthetic_dicom(rows=5000, columns=6000)  # 60 MB of random pixels
    assert big.size > 60_000_000
    source = InstanceSource(
        sop_instance_uid=big.sop_instance_uid,
        study_instance_uid=big.study_instance_uid,
        size=big.size,
        open=lambda: big.path.open("rb"),
    )
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
        [outcome] = instances_store(target=orthanc_clean.target(), instances=[source])
    finally:
        done.set()
        sampler.join()

    assert outcome.stored
    growth = peak - baseline
    assert growth < 16 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB for a 60 MB file"
    stored = orthanc_clean.instance_file(big.sop_instance_uid)
    with big.path.open("rb") as original:
        assert hashlib.sha256(stored).digest() == hashlib.file_digest(original, "sha256").digest()
