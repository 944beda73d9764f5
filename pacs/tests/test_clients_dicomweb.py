"""Reading STOW-RS answers, and configuration errors caught before any request."""

from __future__ import annotations

import json

import pytest

from pacs.clients.dicomweb import parse_store_response
from pacs.errors import InstanceSourceError, PacsRejected, PacsUnavailable
from pacs.selectors import PacsTarget
from pacs.services import instances_confirm, instances_store
from pacs.tests.helpers import source_from_bytes


def referenced(uid: str, url: str | None = None, warning: int | None = None) -> dict:
    item: dict = {"00081155": {"vr": "UI", "Value": [uid]}}
    if url:
        item["00081190"] = {"vr": "UR", "Value": [url]}
    if warning is not None:
        item["00081196"] = {"vr": "US", "Value": [warning]}
    return item


def failed(uid: str, reason: int | None) -> dict:
    item: dict = {"00081155": {"vr": "UI", "Value": [uid]}}
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


def test_store_response_sorts_instances_into_stored_and_failed():
    body = {
        "00081199": {"vr": "SQ", "Value": [referenced("1.1", "http://pacs/1.1", 0xB000)]},
        "00081198": {"vr": "SQ", "Value": [failed("1.2", 0xC000), failed("1.3", None)]},
    }

    response = parse_store_response(202, json.dumps(body).encode())

    assert response is not None
    assert response.stored == {"1.1": "http://pacs/1.1"}
    assert (
        response.failed["1.2"] == "The PACS refused it (failure reason 0xC000 cannot understand)."
    )
    assert "without giving a reason" in response.failed["1.3"]
    assert response.warnings == {"1.1": "0xB000 coercion of data elements"}


def test_a_duplicate_sop_instance_failure_counts_as_stored():
    body = {"00081198": {"vr": "SQ", "Value": [failed("1.2", 0x0111)]}}

    response = parse_store_response(409, json.dumps(body).encode())

    assert response is not None and response.stored == {"1.2": None} and response.failed == {}


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>Bad gateway</html>", b"[]", b'{"00080005": {"vr": "CS"}}', b'"text"'],
)
def test_bodies_without_per_instance_answer_are_not_a_store_response(body):
    assert parse_store_response(400, body) is None


def test_empty_sequences_are_a_store_response_where_nothing_was_stored():
    body = b'{"00081198": {"vr": "SQ"}, "00081199": {"vr": "SQ"}}'

    assert parse_store_response(400, body) is not None


NATIVE_XML_ANSWER = b"""<?xml version="1.0" encoding="UTF-8"?>
<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">
  <DicomAttribute tag="00081199" vr="SQ" keyword="ReferencedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">1.1</Value></DicomAttribute>
      <DicomAttribute tag="00081190" vr="UR"><Value number="1">http://pacs/1.1</Value></DicomAttribute>
      <DicomAttribute tag="00081196" vr="US"><Value number="1">45056</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
  <DicomAttribute tag="00081198" vr="SQ" keyword="FailedSOPSequence">
    <Item number="1">
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">1.2</Value></DicomAttribute>
      <DicomAttribute tag="00081197" vr="US"><Value number="1">49152</Value></DicomAttribute>
    </Item>
    <Item number="2">
      <DicomAttribute tag="00081155" vr="UI"><Value number="1">1.3</Value></DicomAttribute>
      <DicomAttribute tag="00081197" vr="US"><Value number="1">273</Value></DicomAttribute>
    </Item>
  </DicomAttribute>
</NativeDicomModel>
"""


@pytest.mark.parametrize("namespaced", [True, False])
def test_store_response_in_dicom_xml_is_read_like_dicom_json(namespaced):
    body = NATIVE_XML_ANSWER
    if not namespaced:
        body = body.replace(b' xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM"', b"")

    response = parse_store_response(200, body)

    assert response is not None
    assert response.stored == {"1.1": "http://pacs/1.1", "1.3": None}
    assert response.failed == {
        "1.2": "The PACS refused it (failure reason 0xC000 cannot understand)."
    }
    assert response.warnings["1.1"] == "0xB000 coercion of data elements"


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>OK</body></html>",
        b"<NativeDicomModel><DicomAttribute",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "1.1">]>'
        b'<NativeDicomModel><DicomAttribute tag="00081199" vr="SQ"/></NativeDicomModel>',
    ],
    ids=["html", "truncated", "doctype"],
)
def test_xml_that_is_not_a_native_dicom_store_answer_is_not_a_store_response(body):
    assert parse_store_response(200, body) is None


def test_an_invalid_url_is_a_configuration_error():
    target = PacsTarget(key="k", name="broken", dicomweb_url="pacs.example.org/dicom-web")

    with pytest.raises(PacsRejected) as caught:
        instances_store(target=target, instances=[source_from_bytes(b"x", sop_instance_uid="1")])

    assert caught.value.http_status is None
    assert caught.value.message == "The hospital PACS configuration cannot be used."


def test_a_missing_ca_bundle_is_a_configuration_error():
    target = PacsTarget(
        key="k",
        name="tls",
        dicomweb_url="https://127.0.0.1:9/dicom-web",
        ca_bundle="/nonexistent/ca.pem",
    )

    with pytest.raises(PacsRejected):
        instances_confirm(target=target, sop_instance_uids_by_study={"1.2": {"1.2.3"}})


def test_a_target_without_any_url_is_rejected():
    with pytest.raises(PacsRejected):
        instances_store(target=PacsTarget(key="k", name="empty"), instances=[])


def test_nothing_to_send_sends_nothing():
    target = PacsTarget(key="k", name="down", dicomweb_url="http://127.0.0.1:9/dicom-web")
    calls = []

    assert instances_store(target=target, instances=[], on_batch=calls.append) == []
    assert calls == []


@pytest.mark.parametrize(
    "error",
    [
        PacsUnavailable(pacs="Main PACS", detail="HTTP 503", http_status=503),
        PacsRejected(pacs="Main PACS", detail="HTTP 401", http_status=401),
        InstanceSourceError(sop_instance_uid="1.2.3", detail="stream ended"),
    ],
)
def test_pacs_errors_survive_pickling(error):
    import pickle

    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is type(error)
    assert (copy.as_dict(), copy.status_code, str(copy)) == (
        error.as_dict(),
        error.status_code,
        str(error),
    )
