"""The shared health probe: each PACS at most once per interval, whoever asks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from pacs.services import HEALTH_PROBE_INTERVAL_SECONDS, pacs_health_probes
from pacs.tests.proxy import pacs_proxy

pytestmark = pytest.mark.django_db


def test_a_pacs_is_probed_again_only_after_the_interval(orthanc):
    orthanc.start()
    start = timezone.now()
    with pacs_proxy(orthanc.url) as proxy:
        target = orthanc.target(dicomweb_url=f"{proxy.url}/dicom-web", orthanc_url="")

        first = pacs_health_probes(targets=[target], now=start)
        within = pacs_health_probes(
            targets=[target], now=start + timedelta(seconds=HEALTH_PROBE_INTERVAL_SECONDS - 1)
        )
        assert proxy.count() == 1
        after = pacs_health_probes(
            targets=[target], now=start + timedelta(seconds=HEALTH_PROBE_INTERVAL_SECONDS)
        )

        assert proxy.count() == 2
    ok = {"name": "Test Orthanc", "state": "ok", "detail": "The PACS answered a DICOMweb query."}
    assert first == within == after == [ok]


def test_the_stored_result_is_given_while_the_pacs_is_not_probed(orthanc):
    orthanc.start()
    start = timezone.now()
    with pacs_proxy(orthanc.url) as proxy:
        target = orthanc.target(dicomweb_url=f"{proxy.url}/dicom-web", orthanc_url="")
        pacs_health_probes(targets=[target], now=start)
    # The PACS is gone now, but the answer within the interval is the stored one.
    [cached] = pacs_health_probes(targets=[target], now=start + timedelta(seconds=1))
    [fresh] = pacs_health_probes(
        targets=[target], now=start + timedelta(seconds=HEALTH_PROBE_INTERVAL_SECONDS + 1)
    )

    assert (cached["state"], fresh["state"]) == ("ok", "degraded")
    assert fresh["detail"] == "The hospital PACS could not be reached."
