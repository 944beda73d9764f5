"""GET /api/v1/upload/stats and /export: figures per role and facility, periods and
filters, the CSV's rows, the cache and its invalidation, the network reports."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from analytics.models import UploadRollup
from uploads.models import UploadSession

from .history import History, mixed_history

STATS = "/api/v1/upload/stats"
EXPORT = "/api/v1/upload/stats/export"


@pytest.fixture
def made(history: History, people: dict[str, Any]) -> dict[str, Any]:
    return mixed_history(history, alice=people["alice"], bob=people["bob"], nobody=people["nobody"])


def test_a_radiographer_sees_their_facility_only(
    made: Any, people: dict[str, Any], api_for: Any
) -> None:
    answer = api_for(people["alice"]).get(STATS, {"period": "1w"})
    assert answer.status_code == 200, answer.content
    body = answer.json()
    # North: direct (CT stat), confirmed (MR), waited (CT urgent), cancelled (CT).
    assert body["scope"] == "facility"
    assert body["total_uploads"] == 4
    assert body["total_bytes"] == 1000 + 2000 + 3000 + 6000
    assert body["outcomes"] == {"completed": 3, "failed": 0, "cancelled": 1, "in_progress": 0}
    assert body["success_rate"] == 1.0
    assert body["average_upload_seconds"] is not None
    assert set(body["average_parts_seconds"]) == {
        "transfer",
        "processing",
        "confirmation",
        "forwarding",
    }
    assert {m["modality"]: m["uploads"] for m in body["by_modality"]} == {"CT": 3, "MR": 1}
    assert {s["service_level"]: s["uploads"] for s in body["by_service_level"]} == {
        "stat": 1,
        "routine": 2,
        "urgent": 1,
    }
    assert body["retries"]["pacs_retries"] == 2
    assert len(body["daily"]) == 7
    assert body["daily"][-1]["date"] == timezone.localdate().isoformat()
    assert body["daily"][-1]["uploads"] == 4
    assert "by_facility" not in body


def test_a_clinician_of_the_other_clinic_sees_theirs(
    made: Any, people: dict[str, Any], api_for: Any
) -> None:
    body = api_for(people["bob"]).get(STATS).json()
    # South: retried (completed), refused (failed), running (in progress).
    assert body["total_uploads"] == 3
    assert body["outcomes"] == {"completed": 1, "failed": 1, "cancelled": 0, "in_progress": 1}
    assert body["success_rate"] == 0.5
    assert body["retries"]["manual_retries"] == 1
    refused = api_for(people["bob"]).get(STATS, {"facility": "north"})
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == (
        "You can see the statistics of your own facility only."
    )


def test_an_administrator_sees_every_facility_and_a_table_of_them(
    made: Any, people: dict[str, Any], api_for: Any
) -> None:
    body = api_for(people["admin"]).get(STATS, {"period": "all"}).json()
    assert body["scope"] == "all_facilities"
    assert body["total_uploads"] == 8
    table = {row["facility_name"]: row["uploads"] for row in body["by_facility"]}
    assert table == {"North Clinic": 4, "South Clinic": 3, "No facility": 1}
    narrowed = (
        api_for(people["admin"])
        .get(STATS, {"facility": "south", "modality": "ct", "service_level": "routine"})
        .json()
    )
    assert narrowed["total_uploads"] == 1  # the refused CT
    assert narrowed["outcomes"]["failed"] == 1


@pytest.mark.parametrize("role", ["reader", "auditor"])
def test_radiologists_and_auditors_get_no_upload_statistics(
    made: Any, people: dict[str, Any], api_for: Any, role: str
) -> None:
    for url in (STATS, EXPORT):
        answer = api_for(people[role]).get(url)
        assert answer.status_code == 403
        error = answer.json()["error"]
        assert error["code"] == "permission_denied"
        assert error["message"].endswith("radiologists and auditors do not get them.")


def test_a_clinician_without_a_facility_is_told_why_there_is_nothing(
    people: dict[str, Any], api_for: Any
) -> None:
    answer = api_for(people["nobody"]).get(STATS)
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "no_facility"


def test_periods_count_the_days_that_started_in_them(
    made: Any, people: dict[str, Any], api_for: Any
) -> None:
    # The direct upload started 20 days ago, the confirmed one 100 days ago.
    now = timezone.now()
    UploadSession.objects.filter(pk=made["direct"]).update(created_at=now - timedelta(days=20))
    UploadSession.objects.filter(pk=made["confirmed"]).update(created_at=now - timedelta(days=100))
    from analytics.services import rollups_rebuild

    rollups_rebuild()
    api = api_for(people["alice"])
    counts = {
        p: api.get(STATS, {"period": p}).json()["total_uploads"]
        for p in ("1w", "2w", "1m", "3m", "6m", "all")
    }
    assert counts == {"1w": 2, "2w": 2, "1m": 3, "3m": 3, "6m": 4, "all": 4}
    # The breakdowns (whole months from the month grain, the first partial month from the
    # day grain) add up to the totals (from the trend grain) in every period.
    for period in ("1w", "2w", "1m", "3m", "6m", "all"):
        body = api.get(STATS, {"period": period}).json()
        assert sum(m["uploads"] for m in body["by_modality"]) == body["total_uploads"]
        assert sum(s["uploads"] for s in body["by_service_level"]) == body["total_uploads"]
        assert sum(d["uploads"] for d in body["daily"]) == body["total_uploads"]
    assert len(api.get(STATS, {"period": "3m"}).json()["daily"]) == 91
    bad = api.get(STATS, {"period": "5y"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_request"


def test_the_export_streams_the_rollup_rows_of_the_scope(
    made: Any, people: dict[str, Any], api_for: Any
) -> None:
    answer = api_for(people["alice"]).get(EXPORT, {"period": "1m"})
    assert answer.status_code == 200
    assert answer.streaming
    assert answer["Content-Type"] == "text/csv; charset=utf-8"
    assert 'filename="relaypacs-upload-stats-1m.csv"' in answer["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(answer.streaming_content).decode())))
    assert {r["facility"] for r in rows} == {"north"}
    assert sum(int(r["uploads"]) for r in rows) == 4
    stat = next(r for r in rows if r["service_level"] == "stat")
    assert (stat["modality"], stat["outcome"], stat["bytes"]) == ("CT", "completed", "1000")
    assert float(stat["average_upload_seconds"]) >= 0
    cancelled = next(r for r in rows if r["outcome"] == "cancelled")
    assert cancelled["average_upload_seconds"] == ""  # not measured: not received by PACS
    everyone = api_for(people["admin"]).get(EXPORT, {"period": "all"})
    lines = b"".join(everyone.streaming_content).decode().splitlines()
    assert len(lines) - 1 == UploadRollup.objects.filter(grain="day").count()


def test_the_answer_is_cached_until_an_upload_ends(
    made: Any, history: History, people: dict[str, Any], api_for: Any
) -> None:
    api = api_for(people["alice"])
    first = api.get(STATS).json()
    assert first["cached"] is False
    again = api.get(STATS).json()
    assert again["cached"] is True
    assert again["generated_at"] == first["generated_at"]

    upload = history.start(people["carol"], size=10)  # carol is at North too
    history.receive(upload)
    assert api.get(STATS).json()["cached"] is True  # not ended: the cached answer stands
    history.cancel(upload)
    fresh = api.get(STATS).json()
    assert fresh["cached"] is False
    assert fresh["total_uploads"] == first["total_uploads"] + 1


def test_the_statistics_read_a_fixed_number_of_queries(
    made: Any, people: dict[str, Any], api_for: Any, history: History
) -> None:
    api = api_for(people["admin"])
    with CaptureQueriesContext(connection) as small:
        assert api.get(STATS, {"period": "all"}).status_code == 200
    for n in range(5):  # more uploads, days and buckets: the same queries
        extra = history.start(people["alice"], size=10 + n, modality=f"M{n}")
        UploadSession.objects.filter(pk=extra.pk).update(
            created_at=timezone.now() - timedelta(days=n + 3)
        )
        history.cancel(extra)
    from analytics.services import rollups_rebuild

    rollups_rebuild()
    with CaptureQueriesContext(connection) as large:
        assert api.get(STATS, {"period": "all"}).status_code == 200
    assert len(large) == len(small)
    reads = [q["sql"] for q in large.captured_queries if "analytics_uploadrollup" in q["sql"]]
    assert len(reads) == 4  # days (and from them the totals), modality, service level, facility
    assert not any("uploads_uploadsession" in q["sql"] for q in large.captured_queries)


def test_the_app_reports_the_network_it_saw(
    made: Any, people: dict[str, Any], api_for: Any
) -> None:
    upload = UploadSession.objects.get(pk=made["direct"])
    report = {
        "bytes_sent": 4_000_000,
        "active_seconds": 8,
        "outages": 2,
        "offline_seconds": 30.5,
        "retried_chunks": 3,
    }
    api = api_for(people["alice"])
    url = f"/api/v1/upload/{upload.pk}/telemetry"
    assert api.post(url, report, format="json").status_code == 204
    assert api.post(url, report, format="json").status_code == 204  # sent twice: once
    colleague = api_for(people["carol"]).post(url, report, format="json")
    assert colleague.status_code in (403, 404)
    network = api.get(STATS).json()["network"]
    assert network == {
        "uploads_reported": 1,
        "average_throughput_bytes_per_second": 500_000,
        "outages": 2,
        "outage_seconds": 30.5,
        "retried_chunks": 3,
        "retried_chunks_per_upload": 3.0,
    }
    invalid = api.post(url, {"outages": -1}, format="json")
    assert invalid.status_code == 400
    from analytics.services import rollups_current, rollups_recomputed

    assert rollups_current() == rollups_recomputed()[0]


@pytest.mark.parametrize(
    "absurd",
    [
        {"outages": 10**12},
        {"active_seconds": 1e300},
        {"offline_seconds": 1e12},
        {"bytes_sent": 2**62},
        {"retried_chunks": 2**31 - 1},
        {"outages": 2**31 - 1},
    ],
)
def test_an_impossible_network_report_is_refused_and_changes_nothing(
    made: Any, people: dict[str, Any], api_for: Any, absurd: dict[str, Any]
) -> None:
    from analytics.models import UploadRollup
    from analytics.services import rollups_current, rollups_recomputed

    upload = UploadSession.objects.get(pk=made["direct"])
    api = api_for(people["alice"])
    url = f"/api/v1/upload/{upload.pk}/telemetry"
    before = list(UploadRollup.objects.order_by("pk").values())
    answer = api.post(url, absurd, format="json")
    assert answer.status_code == 400, answer.content
    error = answer.json()["error"]
    assert error["code"] == "invalid_telemetry"
    assert error["field"] == next(iter(absurd))
    assert "not possible for this upload" in error["message"]
    assert list(UploadRollup.objects.order_by("pk").values()) == before
    # A sensible report afterwards is still counted, and the rollups add up.
    assert api.post(url, {"outages": 2, "retried_chunks": 1}, format="json").status_code == 204
    assert api.get(STATS).json()["network"]["outages"] == 2
    assert rollups_current() == rollups_recomputed()[0]
