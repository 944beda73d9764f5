"""The PACS goes down and comes back: retryable errors, health, recovery."""

from __future__ import annotations

import socket

import pytest

from pacs.selectors import pacs_health
from pacs.services import PacsUnavailable, instances_confirm, instances_store


def test_stopped_pacs_is_unavailable_then_works_after_restart(
    orthanc_clean, dicom_test_files, to_source
):
    sources = [to_source(f) for f in dicom_test_files[:3]]
    by_study = {dicom_test_files[0].study_instance_uid: {dicom_test_files[0].sop_instance_uid}}
    target = orthanc_clean.target()
    rest_target = orthanc_clean.target(dicomweb_url="")
    orthanc_clean.stop()
    try:
        for each in (target, rest_target):
            with pytest.raises(PacsUnavailable) as caught:
                instances_store(target=each, instances=sources)
            assert (caught.value.code, caught.value.status_code) == ("pacs_unavailable", 503)
            assert caught.value.message == "The hospital PACS could not be reached."
            with pytest.raises(PacsUnavailable):
                instances_confirm(target=each, sop_instance_uids_by_study=by_study)
            health = pacs_health(target=each)
            assert (health["name"], health["state"]) == ("Test Orthanc", "degraded")
    finally:
        orthanc_clean.start()

    assert pacs_health(target=target)["state"] == "ok"
    assert all(o.stored for o in instances_store(target=target, instances=sources))
    assert instances_confirm(target=target, sop_instance_uids_by_study=by_study) == set()


def test_a_pacs_that_never_answers_times_out_as_unavailable(dicom_test_files, to_source, orthanc):
    # A listening socket that never accepts: connects, then silence.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        target = orthanc.target(
            dicomweb_url=f"{url}/dicom-web", orthanc_url=url, timeout_seconds=0.5
        )

        with pytest.raises(PacsUnavailable) as caught:
            instances_store(target=target, instances=[to_source(dicom_test_files[0])])
        health = pacs_health(target=target, timeout=0.5)

    assert "timed out" in caught.value.detail
    assert health["state"] == "degraded"
