"""The rollups kept from the domain events equal a recomputation from scratch, count each
upload once, and move an upload between outcomes as it fails and is retried."""

from __future__ import annotations

from typing import Any

from analytics.models import UploadRollup, UploadTimeline
from analytics.services import rollups_current, rollups_rebuild, rollups_recomputed
from relaypacs import events

from .history import History, mixed_history


def _by_outcome() -> dict[str, int]:
    out: dict[str, int] = {}
    for row in UploadRollup.objects.filter(grain="day"):
        out[row.outcome] = out.get(row.outcome, 0) + row.uploads
    return out


def test_rollups_equal_a_full_recomputation_after_a_mixed_history(
    history: History, people: dict[str, Any]
) -> None:
    mixed_history(history, alice=people["alice"], bob=people["bob"], nobody=people["nobody"])

    current = rollups_current()
    expected, _ = rollups_recomputed()
    assert current == expected
    # Every grain holds every upload once.
    for grain in ("day", "month", "trend"):
        assert sum(v["uploads"] for k, v in current.items() if k[0] == grain) == 8
    current = {k: v for k, v in current.items() if k[0] == "day"}
    assert _by_outcome() == {"completed": 5, "failed": 1, "cancelled": 1, "in_progress": 1}
    totals = {
        name: sum(row[name] for row in current.values())
        for name in ("uploads", "bytes", "pacs_retries", "manual_retries", "uploads_retried")
    }
    assert totals == {
        "uploads": 8,
        "bytes": 36000,
        "pacs_retries": 2,
        "manual_retries": 1,
        "uploads_retried": 2,
    }
    completed = [v for k, v in current.items() if k[5] == "completed"]
    assert sum(v["upload_timed"] for v in completed) == 5
    # Every part measured on every completed upload; confirmation on the confirmed one only.
    for part in ("transfer", "processing", "forwarding"):
        assert sum(v[f"{part}_timed"] for v in completed) == 5
    assert sum(v["confirmation_timed"] for v in completed) == 1

    # A rebuild from scratch writes the same rows again.
    rows_before = set(
        UploadRollup.objects.values_list(
            "day", "facility_id", "modality", "service_level", "outcome", "uploads"
        )
    )
    rollups_rebuild()
    assert {k: v for k, v in rollups_current().items() if k[0] == "day"} == current
    assert rows_before == set(
        UploadRollup.objects.values_list(
            "day", "facility_id", "modality", "service_level", "outcome", "uploads"
        )
    )


def test_every_event_delivered_twice_counts_each_upload_once(
    django_capture_on_commit_callbacks: Any, people: dict[str, Any]
) -> None:
    twice = History(django_capture_on_commit_callbacks, deliver_twice=True)
    mixed_history(twice, alice=people["alice"], bob=people["bob"], nobody=people["nobody"])

    current = rollups_current()
    assert current == rollups_recomputed()[0]
    current = {k: v for k, v in current.items() if k[0] == "trend"}
    assert sum(v["uploads"] for v in current.values()) == 8
    assert sum(v["pacs_retries"] for v in current.values()) == 2
    assert sum(v["manual_retries"] for v in current.values()) == 1


def test_a_failed_upload_moves_to_completed_when_a_retry_delivers_it(
    history: History, people: dict[str, Any]
) -> None:
    upload = history.start(people["bob"], size=4000)
    history.receive(upload)
    history.check(upload)
    history.fail_delivery(upload)
    assert _by_outcome() == {"failed": 1}
    history.retry(upload)
    assert _by_outcome() == {"in_progress": 1}
    history.deliver(upload)
    assert _by_outcome() == {"completed": 1}
    assert UploadRollup.objects.get(grain="day").manual_retries == 1


def test_a_deleted_upload_keeps_its_place_in_the_figures(
    history: History, people: dict[str, Any]
) -> None:
    upload = history.start(people["alice"], size=1234)
    history.cancel(upload)
    before = rollups_current()
    upload.delete()
    events.emit(events.UPLOAD_CANCELLED, upload_id=str(upload.pk))  # late duplicate
    assert rollups_current() == before
    assert rollups_recomputed()[0] == before
    rollups_rebuild()
    assert rollups_current() == before


def test_a_rebuild_counts_uploads_older_than_the_app(
    history: History, people: dict[str, Any]
) -> None:
    upload = history.start(people["alice"], size=99)
    history.receive(upload)
    history.check(upload)
    history.deliver(upload)
    UploadRollup.objects.all().delete()
    UploadTimeline.objects.all().delete()
    assert rollups_rebuild() == 3  # one row per grain
    row = UploadRollup.objects.get(grain="day")
    assert (row.uploads, row.bytes, row.outcome, row.upload_timed, row.processing_timed) == (
        1,
        99,
        "completed",
        1,
        0,
    )  # the processing time was never seen: not guessed
    assert UploadTimeline.objects.get().counted is not None


def test_the_rebuild_command_checks_and_rewrites_the_rollups(
    history: History, people: dict[str, Any], capsys: Any
) -> None:
    import pytest
    from django.core.management import call_command

    mixed_history(history, alice=people["alice"], bob=people["bob"], nobody=people["nobody"])
    call_command("analytics_rebuild", "--check")
    assert "equal a recomputation" in capsys.readouterr().out
    UploadRollup.objects.filter(grain="trend").update(uploads=0)  # damaged
    with pytest.raises(SystemExit):
        call_command("analytics_rebuild", "--check")
    assert "differ from a recomputation" in capsys.readouterr().err
    call_command("analytics_rebuild")
    call_command("analytics_rebuild", "--check")
    assert "equal a recomputation" in capsys.readouterr().out
