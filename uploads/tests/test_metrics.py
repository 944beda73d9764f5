"""The upload pipeline's counters, through the DRF chunk view (chunks sent with an access
token; the lean endpoint's are counted in relaypacs/tests/test_observability_e2e.py)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from prometheus_client import REGISTRY

from uploads.tests.helpers import content_md5

pytestmark = pytest.mark.django_db

CHUNK = 256 * 1024
OUTCOMES = ("stored", "duplicate", "checksum_mismatch", "conflict", "busy", "refused", "error")


def counts() -> dict[str, float]:
    found = {
        outcome: REGISTRY.get_sample_value("relaypacs_chunks_received_total", {"outcome": outcome})
        or 0.0
        for outcome in OUTCOMES
    }
    found["bytes"] = REGISTRY.get_sample_value("relaypacs_bytes_received_total") or 0.0
    return found


def put(client: Any, upload_id: str, index: int, data: bytes, md5: str | None = None) -> Any:
    return client.put(
        f"/api/v1/upload/{upload_id}/chunk?index={index}",
        data=data,
        content_type="application/octet-stream",
        HTTP_CONTENT_MD5=md5 if md5 is not None else content_md5(data),
    )


def test_each_chunk_request_of_the_drf_view_is_counted_once_by_outcome(
    api: Any, other_api: Any
) -> None:
    payload = os.urandom(CHUNK * 2)
    response = api.post(
        "/api/v1/upload/init",
        {"files": [{"name": "a.dcm", "size": len(payload)}], "chunk_size": CHUNK},
        format="json",
    )
    assert response.status_code == 201
    upload_id = response.json()["upload_id"]
    before = counts()

    assert put(api, upload_id, 0, payload[:CHUNK]).status_code == 200
    assert put(api, upload_id, 0, payload[:CHUNK]).status_code == 200  # duplicate
    assert put(api, upload_id, 0, os.urandom(CHUNK)).status_code == 409  # conflict
    assert put(api, upload_id, 1, payload[CHUNK:], md5=content_md5(b"x")).status_code == 422
    assert put(other_api, upload_id, 1, payload[CHUNK:]).status_code == 404  # refused
    assert put(api, upload_id, 1, payload[CHUNK:]).status_code == 200

    after = counts()
    delta = {key: after[key] - before[key] for key in after}
    assert delta == {
        "stored": 2,
        "duplicate": 1,
        "checksum_mismatch": 1,
        "conflict": 1,
        "busy": 0,
        "refused": 1,
        "error": 0,
        "bytes": len(payload),
    }
