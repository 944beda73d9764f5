"""GET /metrics: the product's families in Prometheus text, readable from this machine on the
embedded default, guarded by METRICS_TOKEN or METRICS_ALLOWED_IPS otherwise; a worker's own
metrics server behind the same guard."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from accounts.tests.factories import UserFactory
from relaypacs.metrics import worker_metrics_app
from uploads.models import UploadSession

pytestmark = pytest.mark.django_db

FAMILIES = {
    "relaypacs_chunks_received",
    "relaypacs_bytes_received",
    "relaypacs_uploads",
    "relaypacs_upload_stage_seconds",
    "relaypacs_upload_oldest_waiting_seconds",
    "relaypacs_upload_lease_expiries_max",
    "relaypacs_upload_pacs_retries",
    "relaypacs_stow_request_seconds",
    "relaypacs_qido_request_seconds",
    "relaypacs_pacs_up",
    "relaypacs_celery_queue_depth",
    "relaypacs_beat_heartbeat_timestamp_seconds",
    "relaypacs_upload_storage_size_bytes",
    "relaypacs_upload_storage_free_bytes",
    "relaypacs_reports_open",
    "relaypacs_report_oldest_open_seconds",
    "django_http_requests_latency_seconds_by_view_method",
}


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_metrics_lists_the_products_families_on_the_embedded_default(client: Client) -> None:
    UploadSession.objects.create(
        owner=UserFactory(),
        state="waiting_for_pacs",
        total_size=10,
        chunk_size=256 * 1024,
        total_chunks=1,
    )
    client.get("/api/v1/health")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    found = families(response.content.decode())
    assert set(found) >= FAMILIES, FAMILIES - set(found)
    uploads = {s.labels["state"]: s.value for s in found["relaypacs_uploads"].samples}
    assert uploads["waiting_for_pacs"] == 1 and uploads["completed"] == 0
    assert "relaypacs_metrics_collector_errors" not in found


def test_production_without_token_or_allowlist_refuses_with_what_to_set(
    client: Client, settings: Any
) -> None:
    settings.METRICS_REQUIRE_AUTH = True
    response = client.get("/metrics")
    assert response.status_code == 403
    assert b"METRICS_TOKEN" in response.content


def test_the_metrics_token_is_asked_as_a_bearer_token(client: Client, settings: Any) -> None:
    settings.METRICS_REQUIRE_AUTH = True
    settings.METRICS_TOKEN = "a-long-scrape-token"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    good = client.get("/metrics", HTTP_AUTHORIZATION="Bearer a-long-scrape-token")
    assert good.status_code == 200 and b"relaypacs_uploads" in good.content


def test_an_allowed_address_scrapes_without_the_token(client: Client, settings: Any) -> None:
    settings.METRICS_REQUIRE_AUTH = True
    settings.METRICS_ALLOWED_IPS = ["10.9.9.9", " 10.1.0.0/16"]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.2.0.1").status_code == 403


def test_the_embedded_default_answers_this_machine_only(client: Client) -> None:
    # `serve` binds every interface: a phone on the clinic Wi-Fi must not read the metrics.
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200
    refused = client.get("/metrics", REMOTE_ADDR="192.168.1.20")
    assert refused.status_code == 403
    assert b"this machine only" in refused.content and b"METRICS_TOKEN" in refused.content
    assert (
        client.get(
            "/metrics", REMOTE_ADDR="192.168.1.20", HTTP_X_FORWARDED_FOR="127.0.0.1"
        ).status_code
        == 403
    )


def test_a_token_closes_loopback_too_unless_it_is_allowed(client: Client, settings: Any) -> None:
    settings.METRICS_TOKEN = "a-long-scrape-token"
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 401
    settings.METRICS_ALLOWED_IPS = ["127.0.0.1"]
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200


def test_an_allowlist_replaces_the_loopback_default(client: Client, settings: Any) -> None:
    # As env.list reads "10.1.0.0/16, not-an-address," (spaces kept, a typo).
    settings.METRICS_ALLOWED_IPS = ["10.1.0.0/16", " not-an-address", ""]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    refused = client.get("/metrics", REMOTE_ADDR="127.0.0.1")
    assert refused.status_code == 403 and b"METRICS_ALLOWED_IPS" in refused.content


def _worker_scrape(app: Any, **environ: str) -> tuple[str, bytes]:
    answer: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer["status"] = status

    base = {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""}
    body = b"".join(app({**base, **environ}, start_response))
    return answer["status"], body


def test_a_workers_metrics_server_checks_the_token_and_answers_loopback(settings: Any) -> None:
    registry = CollectorRegistry(auto_describe=False)
    Counter("relaypacs_worker_test", "A counter of this test.", registry=registry).inc()
    app = worker_metrics_app(registry)
    settings.METRICS_REQUIRE_AUTH = True
    settings.METRICS_TOKEN = "a-long-scrape-token"
    status, body = _worker_scrape(app, REMOTE_ADDR="10.0.0.7")
    assert status.startswith("401") and b"METRICS_TOKEN" in body
    status, _ = _worker_scrape(app, REMOTE_ADDR="10.0.0.7", HTTP_AUTHORIZATION="Bearer wrong")
    assert status.startswith("401")
    status, body = _worker_scrape(
        app, REMOTE_ADDR="10.0.0.7", HTTP_AUTHORIZATION="Bearer a-long-scrape-token"
    )
    assert status.startswith("200") and b"relaypacs_worker_test_total 1.0" in body
    # The container's health check asks from loopback, without the token.
    status, body = _worker_scrape(app, REMOTE_ADDR="127.0.0.1")
    assert status.startswith("200") and b"relaypacs_worker_test_total" in body
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_IPS = ["10.0.0.0/24"]
    assert _worker_scrape(app, REMOTE_ADDR="10.0.0.7")[0].startswith("200")
    assert _worker_scrape(app, REMOTE_ADDR="10.0.1.7")[0].startswith("403")
