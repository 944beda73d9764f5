"""The rebuild: the set-based SQL rebuild writes exactly what the upload-by-upload
recomputation in Python says (rows and every upload's recorded contribution), a rebuild
during traffic neither deadlocks with the events' handlers nor loses their work, and a
deleted facility takes its statistics with it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from accounts.models import Facility
from analytics.models import UploadRollup, UploadTimeline
from analytics.services import (
    NetworkReport,
    rollups_current,
    rollups_rebuild,
    rollups_rebuild_in_python,
    rollups_recomputed,
    upload_event_record,
    upload_telemetry_record,
)
from relaypacs import events
from uploads.models import Study, UploadSession
from uploads.services import transitions

from .history import History, mixed_history

# How long a test waits for another connection to be seen waiting for a lock.
LOCK_WAIT_SECONDS = 30


def _contributions() -> dict[uuid.UUID, Any]:
    return dict(UploadTimeline.objects.exclude(counted=None).values_list("upload_id", "counted"))


def _add_studies(made: dict[str, uuid.UUID]) -> None:
    """Studies the modality rule must read the SQL way too: the relay's SR note first,
    an SR-only study, an empty study before a real one, lower case, a long code."""
    Study.objects.create(
        session_id=made["direct"], study_instance_uid="1.1", modalities=["SR", "ct"]
    )
    Study.objects.create(session_id=made["confirmed"], study_instance_uid="2.1", modalities=["SR"])
    Study.objects.create(session_id=made["waited"], study_instance_uid="3.1", modalities=[])
    Study.objects.create(
        session_id=made["waited"], study_instance_uid="3.2", modalities=["", "MR", "CT"]
    )
    Study.objects.create(
        session_id=made["retried"], study_instance_uid="4.1", modalities=["X" * 20]
    )
    # No study: the modality typed at init, with blanks around it.
    UploadSession.objects.filter(pk=made["running"]).update(metadata={"modality": " dx \t"})


def test_the_sql_rebuild_writes_what_the_python_recomputation_says(
    history: History, people: dict[str, Any]
) -> None:
    made = mixed_history(history, alice=people["alice"], bob=people["bob"], nobody=people["nobody"])
    _add_studies(made)
    # A deleted upload keeps its place; one older than the app has no timeline yet.
    gone = history.start(people["alice"], size=321, modality="US")
    history.cancel(gone)
    UploadSession.objects.filter(pk=gone.pk).delete()
    old = history.start(people["bob"], size=654, modality="MG")
    UploadTimeline.objects.filter(upload_id=old.pk).delete()
    # Odd times: durations whose float seconds times 1000 fall just short of a whole.
    done = UploadSession.objects.get(pk=made["direct"])
    UploadSession.objects.filter(pk=done.pk).update(
        received_at=done.created_at + timedelta(seconds=4.35),
        completed_at=done.created_at + timedelta(seconds=8.7, microseconds=999),
    )
    expected, contributions = rollups_recomputed()

    rows = rollups_rebuild()

    assert rollups_current() == expected
    assert rows == len(expected)
    assert _contributions() == contributions
    modalities = {k[3] for k in expected if k[0] == "day"}
    assert {"CT", "SR", "MR", "X" * 16, "DX", "US", "MG"} <= modalities
    # Whole milliseconds, floored, to the unit.
    direct = contributions[made["direct"]]["values"]
    assert (direct["upload_ms"], direct["transfer_ms"]) == (8700, 4350)

    # Python's way (a database other than PostgreSQL) writes the same.
    with transaction.atomic():
        assert rollups_rebuild_in_python() == rows
    assert rollups_current() == expected
    assert _contributions() == contributions


def test_a_deleted_facility_takes_its_statistics_with_it(
    history: History, people: dict[str, Any], south: Facility
) -> None:
    mixed_history(history, alice=people["alice"], bob=people["bob"], nobody=people["nobody"])
    assert UploadRollup.objects.filter(facility=south).exists()
    # The administrator deletes the clinic's uploads, then the clinic (people first:
    # they belong to it).
    UploadSession.objects.filter(facility=south).delete()
    people["bob"].delete()
    south_id = south.pk
    south.delete()

    assert not UploadRollup.objects.filter(facility_id=south_id).exists()
    assert rollups_current() == rollups_recomputed()[0]
    rollups_rebuild()
    assert not UploadRollup.objects.filter(facility_id=south_id).exists()
    assert rollups_current() == rollups_recomputed()[0]


def test_a_rollup_row_reads_as_a_sentence_in_the_admin(
    history: History, people: dict[str, Any]
) -> None:
    upload = history.start(people["alice"], size=10, level="urgent", modality="CT")
    history.cancel(upload)
    day = UploadRollup.objects.get(grain="day")
    assert str(day) == f"Statistics of 1 upload on {day.day} (CT, urgent, Cancelled)."
    month = UploadRollup.objects.get(grain="month")
    assert str(month) == f"Statistics of 1 upload in {day.day:%B %Y} (CT, urgent, Cancelled)."


def _someone_waits_for_a_lock(*, running: str = "") -> None:
    """Return once another connection to the test database waits for a lock (running a
    statement that starts with ``running``)."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    with connections["default"].cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database() "
                "AND ltrim(query) ILIKE %s",
                [f"{running}%"],
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.05)
    raise AssertionError("nobody waited for a lock")


class _Held(threading.Thread):
    """Runs ``work`` in a transaction of its own connection and holds it open (and every
    lock taken) until ``release`` is set; ``error`` is what it raised."""

    def __init__(self, work: Callable[[], Any], *, hold: bool) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.hold = hold
        self.started_work = threading.Event()
        self.done_work = threading.Event()
        self.release = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with transaction.atomic():
                self.started_work.set()
                self.work()
                self.done_work.set()
                if self.hold:
                    assert self.release.wait(LOCK_WAIT_SECONDS)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            self.error = error
        finally:
            connection.close()


@pytest.mark.django_db(transaction=True)
def test_a_rebuild_during_traffic_waits_for_handlers_and_handlers_wait_for_it(
    people: dict[str, Any],
) -> None:
    history = History(_no_capture)
    first = history.start(people["alice"], size=100, modality="CT")
    second = history.start(people["bob"], size=200, modality="MR")
    # Each ends without its event being handled yet: the handlers below count it.
    assert transitions.upload_cancelled(upload_id=first.pk)
    assert transitions.upload_cancelled(upload_id=second.pk)

    # 1. A handler is under way (its timeline and rollup rows locked): the rebuild
    #    waits for it, and then counts what it did.
    handler = _Held(
        lambda: upload_event_record(upload_id=first.pk, name=events.UPLOAD_CANCELLED), hold=True
    )
    handler.start()
    assert handler.done_work.wait(LOCK_WAIT_SECONDS), handler.error
    rebuild = _Held(rollups_rebuild, hold=True)
    rebuild.start()
    # It waits before it reads or writes anything (so in the handlers' lock order).
    _someone_waits_for_a_lock(running="LOCK TABLE")
    assert not rebuild.done_work.is_set()
    handler.release.set()
    handler.join(LOCK_WAIT_SECONDS)
    assert rebuild.done_work.wait(LOCK_WAIT_SECONDS), rebuild.error

    # 2. The rebuild is under way (not committed): the app's network report of the
    #    second upload, coming now, waits for it and is counted after it.
    report = NetworkReport(
        bytes_sent=200, active_seconds=1.0, outages=1, offline_seconds=2.0, retried_chunks=0
    )
    late = _Held(lambda: upload_telemetry_record(upload_id=second.pk, report=report), hold=False)
    late.start()
    _someone_waits_for_a_lock()
    assert not late.done_work.is_set()
    rebuild.release.set()
    rebuild.join(LOCK_WAIT_SECONDS)
    late.join(LOCK_WAIT_SECONDS)

    assert (handler.error, rebuild.error, late.error) == (None, None, None)
    assert not (handler.is_alive() or rebuild.is_alive() or late.is_alive())
    current = rollups_current()
    assert current == rollups_recomputed()[0]
    day = {(k[2], k[3], k[5]): v for k, v in current.items() if k[0] == "day"}
    alice, bob = people["alice"].facility_id, people["bob"].facility_id
    assert set(day) == {(alice, "CT", "cancelled"), (bob, "MR", "cancelled")}
    assert day[(bob, "MR", "cancelled")]["outages"] == 1
    assert day[(bob, "MR", "cancelled")]["telemetry_uploads"] == 1


class _no_capture:  # noqa: N801 - stands in for django_capture_on_commit_callbacks
    """On-commit callbacks run by themselves in a transactional test: capture nothing."""

    def __init__(self, execute: bool = False) -> None:
        pass

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def test_a_rebuild_stamps_no_figure_the_upload_did_not_have(
    history: History, people: dict[str, Any]
) -> None:
    upload = history.start(people["alice"], size=5, modality="CT")
    history.receive(upload)
    UploadTimeline.objects.all().delete()
    UploadRollup.objects.all().delete()
    rollups_rebuild()
    counted = UploadTimeline.objects.get(upload_id=upload.pk).counted
    assert counted == {
        "key": [
            timezone.localdate(upload.created_at).isoformat(),
            people["alice"].facility_id,
            "CT",
            "routine",
            "in_progress",
        ],
        "values": {"uploads": 1, "bytes": 5},
    }
