"""PACS that answer differently from Orthanc, played by a proxy in front of the real one:
QIDO-RS pages capped at 100 results, STOW-RS answers in DICOM XML or without a body,
an Orthanc REST API that refuses, fails or cannot be reached while DICOMweb works."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any
from xml.etree import ElementTree

import pytest

from pacs import services as pacs_services
from pacs.clients.dicomweb import DicomwebClient
from pacs.errors import PacsNotListing, PacsUnavailable
from pacs.services import instances_confirm, instances_store
from pacs.tests.helpers import source_from_bytes
from pacs.tests.proxy import Exchange, pacs_proxy

# Like PACS that cap every query answer at 100 results whatever limit was asked.
PAGE_CAP = 100
STUDY_UID = "1.2.826.0.1.3680043.10.543.100"
NATIVE_DICOM = "http://dicom.nema.org/PS3.19/models/NativeDICOM"


def capped(exchange: Exchange) -> tuple[int, str, bytes]:
    """Truncate QIDO-RS and Orthanc tools/find answers to PAGE_CAP results."""
    is_qido = exchange.method == "GET" and exchange.path.endswith("/instances")
    is_find = exchange.method == "POST" and exchange.path.endswith("/tools/find")
    if (is_qido or is_find) and exchange.status == 200:
        answer = json.loads(exchange.body)
        return 200, exchange.content_type, json.dumps(answer[:PAGE_CAP]).encode()
    return exchange.status, exchange.content_type, exchange.body


def is_stow(exchange: Exchange) -> bool:
    return exchange.method == "POST" and exchange.path.endswith("/dicom-web/studies")


def _xml_attribute(parent: ElementTree.Element, tag: str, element: dict[str, Any]) -> None:
    attribute = ElementTree.SubElement(
        parent, f"{{{NATIVE_DICOM}}}DicomAttribute", tag=tag, vr=element.get("vr", "")
    )
    for number, value in enumerate(element.get("Value", []), start=1):
        if isinstance(value, dict):
            item = ElementTree.SubElement(attribute, f"{{{NATIVE_DICOM}}}Item", number=str(number))
            for item_tag, item_element in value.items():
                _xml_attribute(item, item_tag, item_element)
        else:
            child = ElementTree.SubElement(
                attribute, f"{{{NATIVE_DICOM}}}Value", number=str(number)
            )
            child.text = str(value)


def json_to_native_xml(body: bytes) -> bytes:
    """The PS3.19 Native DICOM Model document equivalent to a DICOM JSON data set."""
    dataset = json.loads(body)
    root = ElementTree.Element(f"{{{NATIVE_DICOM}}}NativeDicomModel")
    for tag, element in dataset.items():
        _xml_attribute(root, tag, element)
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)


def stow_as_xml(exchange: Exchange) -> tuple[int, str, bytes]:
    if is_stow(exchange):
        return exchange.status, "application/dicom+xml", json_to_native_xml(exchange.body)
    return exchange.status, exchange.content_type, exchange.body


def stow_answer(status: int, content_type: str, body: bytes):
    """A PACS that stores what Orthanc stores but answers STOW-RS with this instead."""

    def rewrite(exchange: Exchange) -> tuple[int, str, bytes]:
        if is_stow(exchange):
            return status, content_type, body
        return exchange.status, exchange.content_type, exchange.body

    return rewrite


@pytest.fixture
def large_study(orthanc_clean, synthetic_dicom, to_source):
    """More instances in one study and series than a capped PACS lists in one page, stored."""
    files = [
        synthetic_dicom(
            rows=8,
            columns=8,
            study_instance_uid=STUDY_UID,
            series_instance_uid=f"{STUDY_UID}.1",
            instance_number=n,
        )
        for n in range(PAGE_CAP + 50)
    ]
    outcomes = instances_store(
        target=orthanc_clean.target(), instances=[to_source(f) for f in files]
    )
    assert all(o.stored for o in outcomes)
    return {f.sop_instance_uid for f in files}


def test_confirm_pages_past_a_pacs_that_caps_qido_pages(orthanc_clean, large_study):
    with pacs_proxy(orthanc_clean.url, capped) as proxy:
        target = orthanc_clean.target(dicomweb_url=f"{proxy.url}/dicom-web", orthanc_url="")

        missing = instances_confirm(
            target=target, sop_instance_uids_by_study={STUDY_UID: large_study}
        )

        # Two pages of 100 and 50; all expected instances seen, so no third request.
        assert (missing, proxy.count(method="GET")) == (set(), 2)


def test_study_listing_without_expected_uids_pages_until_an_empty_page(orthanc_clean, large_study):
    with pacs_proxy(orthanc_clean.url, capped) as proxy:
        target = orthanc_clean.target(dicomweb_url=f"{proxy.url}/dicom-web")
        with DicomwebClient(target) as dicomweb:
            listed = dicomweb.study_sop_instance_uids(study_instance_uid=STUDY_UID)

        assert (listed, proxy.count(method="GET")) == (large_study, 3)


def test_confirm_by_rest_pages_past_a_capped_tools_find(orthanc_clean, large_study):
    with pacs_proxy(orthanc_clean.url, capped) as proxy:
        target = orthanc_clean.target(dicomweb_url="", orthanc_url=proxy.url)

        missing = instances_confirm(
            target=target, sop_instance_uids_by_study={STUDY_UID: large_study}
        )

        assert (missing, proxy.count(path_contains="/tools/find")) == (set(), 2)


def test_a_stow_answer_in_dicom_xml_is_read_per_instance(
    orthanc_clean, dicom_test_files, to_source
):
    files = dicom_test_files[:4]
    with pacs_proxy(orthanc_clean.url, stow_as_xml) as proxy:
        target = orthanc_clean.target(dicomweb_url=f"{proxy.url}/dicom-web", orthanc_url="")

        outcomes = instances_store(target=target, instances=[to_source(f) for f in files])

        assert [(o.sop_instance_uid, o.stored) for o in outcomes] == [
            (f.sop_instance_uid, True) for f in files
        ]
        assert all(o.retrieve_url for o in outcomes)  # taken from the XML answer
        assert proxy.count(method="GET") == 0  # read from the answer, no QIDO-RS needed
    by_study: dict[str, set[str]] = {}
    for f in files:
        by_study.setdefault(f.study_instance_uid, set()).add(f.sop_instance_uid)
    assert instances_confirm(
        target=orthanc_clean.target(), sop_instance_uids_by_study=by_study
    ) == (set())


def test_a_stow_refusal_in_dicom_xml_is_a_per_instance_failure(orthanc_clean):
    junk = source_from_bytes(b"not a DICOM file", sop_instance_uid="1.2.826.0.1.3680043.10.9")
    with pacs_proxy(orthanc_clean.url, stow_as_xml) as proxy:
        target = orthanc_clean.target(dicomweb_url=f"{proxy.url}/dicom-web", orthanc_url="")

        [outcome] = instances_store(target=target, instances=[junk])

    assert outcome.stored is False and outcome.failure_reason


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("", b""),
        ("text/html", b"<html><body>Stored.</body></html>"),
        ("application/dicom+json", b"{not json"),
        ("application/dicom+xml", b"<NativeDicomModel><DicomAttribute"),
    ],
    ids=["empty", "html", "broken-json", "broken-xml"],
)
def test_a_2xx_stow_answer_that_cannot_be_read_is_checked_with_qido(
    orthanc_clean, dicom_test_files, to_source, content_type, body
):
    files = dicom_test_files[:3]
    with pacs_proxy(orthanc_clean.url, stow_answer(200, content_type, body)) as proxy:
        target = orthanc_clean.target(dicomweb_url=f"{proxy.url}/dicom-web", orthanc_url="")

        outcomes = instances_store(target=target, instances=[to_source(f) for f in files])

        assert [(o.sop_instance_uid, o.stored) for o in outcomes] == [
            (f.sop_instance_uid, True) for f in files
        ]
        assert proxy.count(method="GET") >= 1  # QIDO-RS was asked
        by_study: dict[str, set[str]] = {}
        for f in files:
            by_study.setdefault(f.study_instance_uid, set()).add(f.sop_instance_uid)
        assert instances_confirm(target=target, sop_instance_uids_by_study=by_study) == set()


def test_a_2xx_stow_answer_without_body_for_what_the_pacs_does_not_list_is_retried_later(
    orthanc_clean,
):
    # Orthanc refuses the unreadable part; the proxy turns that into a bodiless 200.
    junk = source_from_bytes(
        b"not a DICOM file",
        sop_instance_uid="1.2.826.0.1.3680043.10.9",
        study_instance_uid="1.2.826.0.1.3680043.10.9.1",
    )
    with pacs_proxy(orthanc_clean.url, stow_answer(200, "", b"")) as proxy:
        target = orthanc_clean.target(dicomweb_url=f"{proxy.url}/dicom-web", orthanc_url="")

        with pytest.raises(PacsNotListing) as caught:
            instances_store(target=target, instances=[junk])

    assert isinstance(caught.value, PacsUnavailable)  # retryable, not a refusal
    assert caught.value.code == "pacs_not_listing"
    assert caught.value.http_status == 200


def rest_refused(exchange: Exchange) -> tuple[int, str, bytes]:
    """A proxy that publishes DICOMweb only: Orthanc's REST API answers 403."""
    if "/dicom-web" not in exchange.path:
        return 403, "text/plain", b"Forbidden"
    return exchange.status, exchange.content_type, exchange.body


def test_confirm_asks_orthancs_index_where_an_orthanc_url_is_set(orthanc_clean, large_study):
    with pacs_proxy(orthanc_clean.url) as proxy:
        target = orthanc_clean.target(dicomweb_url=f"{proxy.url}/dicom-web", orthanc_url=proxy.url)

        missing = instances_confirm(
            target=target, sop_instance_uids_by_study={STUDY_UID: large_study}
        )

        assert missing == set()
        assert proxy.count(path_contains="/tools/find") >= 1
        assert proxy.count(path_contains="/dicom-web") == 0  # no QIDO-RS


def test_confirm_asks_qido_when_orthancs_rest_api_is_refused(orthanc_clean, large_study):
    with pacs_proxy(orthanc_clean.url, rest_refused) as proxy:
        target = orthanc_clean.target(dicomweb_url=f"{proxy.url}/dicom-web", orthanc_url=proxy.url)

        missing = instances_confirm(
            target=target,
            sop_instance_uids_by_study={
                STUDY_UID: large_study,
                "1.2.826.0.1.3680043.10.543.404": {"1.2.826.0.1.3680043.10.543.404.1"},
            },
        )

        assert missing == {"1.2.826.0.1.3680043.10.543.404.1"}
        assert proxy.count(path_contains="/tools/find") == 1  # refused once, then QIDO-RS only
        assert proxy.count(method="GET", path_contains="/dicom-web") >= 2


def find_answers_502(exchange: Exchange) -> tuple[int, str, bytes]:
    """A gateway in front of Orthanc's REST API that fails; DICOMweb still works."""
    if exchange.path.endswith("/tools/find"):
        return 502, "text/plain", b"Bad Gateway"
    return exchange.status, exchange.content_type, exchange.body


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port that refuses connections: bound (so no one else takes it), not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local port that accepts connections (in the kernel's backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def test_confirm_asks_qido_when_orthancs_rest_api_answers_502(orthanc_clean, large_study):
    with pacs_proxy(orthanc_clean.url, find_answers_502) as proxy:
        target = orthanc_clean.target(dicomweb_url=f"{proxy.url}/dicom-web", orthanc_url=proxy.url)

        missing = instances_confirm(
            target=target,
            sop_instance_uids_by_study={
                STUDY_UID: large_study,
                "1.2.826.0.1.3680043.10.543.404": {"1.2.826.0.1.3680043.10.543.404.1"},
            },
        )

        assert missing == {"1.2.826.0.1.3680043.10.543.404.1"}
        assert proxy.count(path_contains="/tools/find") == 1  # failed once, then QIDO-RS only
        assert proxy.count(method="GET", path_contains="/dicom-web") >= 2


def test_confirm_asks_qido_when_orthancs_rest_url_refuses_connections(
    orthanc_clean, large_study, closed_port, caplog
):
    with pacs_proxy(orthanc_clean.url) as proxy:
        target = orthanc_clean.target(
            dicomweb_url=f"{proxy.url}/dicom-web", orthanc_url=f"http://127.0.0.1:{closed_port}"
        )

        with caplog.at_level(logging.INFO, logger="pacs.services"):
            missing = instances_confirm(
                target=target, sop_instance_uids_by_study={STUDY_UID: large_study}
            )

        assert missing == set()
        assert proxy.count(method="GET", path_contains="/dicom-web") >= 1  # QIDO-RS answered
    assert "using QIDO-RS" in caplog.text
    assert STUDY_UID not in caplog.text  # what was asked stays out of the log


def test_confirm_gives_a_silent_orthanc_rest_url_up_for_qido_quickly(
    orthanc_clean, large_study, silent_port, monkeypatch
):
    monkeypatch.setattr(pacs_services, "INDEX_FIRST_TIMEOUT_SECONDS", 0.5)
    with pacs_proxy(orthanc_clean.url) as proxy:
        target = orthanc_clean.target(
            dicomweb_url=f"{proxy.url}/dicom-web", orthanc_url=f"http://127.0.0.1:{silent_port}"
        )
        started = time.monotonic()

        missing = instances_confirm(
            target=target, sop_instance_uids_by_study={STUDY_UID: large_study}
        )

        assert missing == set()
        # The short timeout, not the target's 120 s, then QIDO-RS.
        assert time.monotonic() - started < 10
        assert proxy.count(method="GET", path_contains="/dicom-web") >= 1
