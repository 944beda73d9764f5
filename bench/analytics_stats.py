"""Benchmark of the upload statistics (issue 15) over 1,000,000 real uploads.

Into a new database ``<DATABASE_URL's name>_analytics_bench`` (dropped at the end) it
writes with PostgreSQL ``COPY`` 1,000,000 upload rows with their files (1-3 each), studies
and the timelines the domain events would have recorded, spread over the last 365 days, 20
facilities of uneven size, 8 modalities, 4 service levels and every outcome in realistic
shares. It then builds the rollups as the product does (``manage.py analytics_rebuild``,
timed), compares them with the upload-by-upload recomputation in Python (with
``--verify``), and measures ``GET /api/v1/upload/stats`` for each period, uncached and
cached, and the time to the first row of a one-month CSV export.

Requests go through Django's whole stack in this process (middleware, DRF, JWT
authentication), as an administrator (every facility and the facility table) and as a
radiographer (one facility). Uncached: the cache version is changed before each request
(what an upload's end does), so each one reads the rollups.

Usage: ``DATABASE_URL=postgres://... .venv/bin/python bench/analytics_stats.py
[--uploads N] [--repeats N] [--verify] [--explain] [--no-record] [--keep]``.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import time
import urllib.parse
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import machine  # noqa: E402

RESULTS = REPO / "bench" / "RESULTS.md"
UPLOADS = 1_000_000
DAYS = 365
FACILITIES = 20
# Shares of a clinic network's uploads (photos from the wards are many, nuclear few).
MODALITIES = {
    "CR": 0.25,
    "CT": 0.2,
    "XC": 0.15,
    "MR": 0.12,
    "US": 0.12,
    "DX": 0.1,
    "MG": 0.04,
    "NM": 0.02,
}
LEVELS = {"routine": 0.7, "urgent": 0.18, "emergency": 0.07, "stat": 0.05}
OUTCOMES = {"completed": 0.93, "failed": 0.03, "cancelled": 0.035, "in_progress": 0.005}
REPEATS = 30
# Radiographers per facility who own its uploads.
OWNERS_PER_FACILITY = 5
GOAL_P95_MS = 100
GOAL_FIRST_BYTE_MS = 200
BENCH_DB_SUFFIX = "_analytics_bench"


def fresh_database(stack: ExitStack, *, keep: bool = False) -> str:
    import psycopg

    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        raise SystemExit("Set DATABASE_URL to a PostgreSQL server (the bench uses COPY).")
    parts = urllib.parse.urlsplit(url)
    name = parts.path.lstrip("/") + BENCH_DB_SUFFIX
    maintenance = urllib.parse.urlunsplit(parts._replace(path="/postgres"))

    def execute(sql: str) -> None:
        with psycopg.connect(maintenance, autocommit=True) as connection:
            connection.execute(sql)

    execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        from django.db import connections

        connections.close_all()
        execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    if not keep:
        stack.callback(drop)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def _pick(rng: random.Random, shares: dict[str, float]) -> Any:
    return rng.choices(list(shares), weights=list(shares.values()))[0]


# What happened to an upload that is not over yet, and how many reached each state.
IN_PROGRESS_STATES = {
    "receiving": 0.5,
    "processing": 0.2,
    "forwarding": 0.2,
    "waiting_for_pacs": 0.1,
}
# Rows COPYed per round trip (of each table): the buffers stay a few tens of MB.
COPY_BATCH = 20_000


class _Rows:
    """Tab-separated lines for COPY ... FROM STDIN (text format), one table's columns."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = columns
        self.lines: list[str] = []

    def add(self, values: dict[str, Any]) -> None:
        cells = []
        for name in self.columns:
            value = values[name]  # a KeyError names a column the bench forgot
            if value is None:
                cells.append("\\N")
            elif value is True or value is False:
                cells.append("t" if value else "f")
            else:
                cells.append(str(value))
        self.lines.append("\t".join(cells))

    def copy(self, cursor: Any, table: str) -> int:
        count = len(self.lines)
        if count:
            names = ", ".join(f'"{name}"' for name in self.columns)
            with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                copy.write("\n".join(self.lines) + "\n")
        self.lines = []
        return count


def _columns(model: Any, *, leave_out: tuple[str, ...] = ()) -> list[str]:
    """Every concrete column of ``model`` (so that a column added later makes the bench
    fail with its name, not write rows the product would not)."""
    return [f.column for f in model._meta.concrete_fields if f.column not in leave_out]


def fill(
    *, uploads: int, facility_owners: dict[int, list[int]], now: Any, rng: random.Random
) -> dict[str, int]:
    """COPY ``uploads`` uploads with their studies, files (1-3 each) and timelines (what
    the domain events would have recorded; ``counted`` empty, as if the statistics were
    installed afterwards) into the uploads' and analytics' tables. Returns rows per table."""
    import json
    import uuid as uuid_module

    from django.db import connection

    from analytics.models import UploadTimeline
    from uploads.models import Study, UploadFile, UploadSession

    sessions = _Rows(_columns(UploadSession))
    files = _Rows(_columns(UploadFile, leave_out=("id",)))
    studies = _Rows(_columns(Study, leave_out=("id",)))
    timelines = _Rows(_columns(UploadTimeline))
    # Clinics differ in size: the biggest sends about four times what the smallest does.
    facility_ids = list(facility_owners)
    facility_weights = [1 + 3 * i / max(len(facility_ids) - 1, 1) for i in range(len(facility_ids))]
    counts = {"uploads": 0, "files": 0, "studies": 0, "timelines": 0}
    start = now - timedelta(days=DAYS)
    span = (now - start).total_seconds()

    def at(t: Any) -> str | None:
        return None if t is None else t.isoformat()

    def flush() -> None:
        with connection.cursor() as wrapper:
            cursor = wrapper.connection.cursor()
            counts["uploads"] += sessions.copy(cursor, UploadSession._meta.db_table)
            counts["studies"] += studies.copy(cursor, Study._meta.db_table)
            counts["files"] += files.copy(cursor, UploadFile._meta.db_table)
            counts["timelines"] += timelines.copy(cursor, UploadTimeline._meta.db_table)

    for n in range(uploads):
        upload_id = uuid_module.UUID(int=rng.getrandbits(128), version=4)
        facility_id = rng.choices(facility_ids, weights=facility_weights)[0]
        modality = _pick(rng, MODALITIES)
        level = _pick(rng, LEVELS)
        outcome = _pick(rng, OUTCOMES)
        state = _pick(rng, IN_PROGRESS_STATES) if outcome == "in_progress" else outcome
        created = start + timedelta(seconds=rng.random() * span)
        size = int(rng.lognormvariate(17.5, 1.2)) + 1000  # median ~40 MB
        chunk = 1 << 20
        transfer = timedelta(seconds=size / rng.uniform(0.5e6, 8e6))
        processing = timedelta(seconds=rng.uniform(2, 40))
        forwarding = timedelta(seconds=rng.uniform(3, 120))
        failed_late = outcome == "failed" and rng.random() < 0.6  # refused by the PACS
        received = (
            created + transfer
            if state not in ("receiving", "cancelled")
            or (state == "cancelled" and rng.random() < 0.2)
            else None
        )
        checked = received + processing if received and state not in ("processing",) else None
        if outcome == "failed" and not failed_late:
            checked = None  # refused by the checks
        completed = checked + forwarding if state == "completed" and checked else None
        failed = (checked or received or created) + forwarding if outcome == "failed" else None
        ended = completed or failed or (created + transfer if outcome == "cancelled" else None)
        sessions.add(
            {
                "id": upload_id,
                "owner_id": rng.choice(facility_owners[facility_id]),
                "facility_id": facility_id,
                "state": state,
                "total_size": size,
                "chunk_size": chunk,
                "total_chunks": -(-size // chunk),
                "metadata": json.dumps({"modality": modality}),
                "clinical_notes": "",
                "service_level": level,
                "allow_partial": False,
                "force_upload": False,
                "duplicate_key": "",
                "created_at": at(created),
                "updated_at": at(ended or received or created),
                "received_at": at(received),
                "completed_at": at(completed),
                "failed_at": at(failed),
                "lease_until": None,
                "lease_owner": "",
                "attempts": 1 if checked else 0,
                "next_retry_at": None,
                "first_pacs_failure_at": None,
                "dispatched_at": None,
                "lease_expiries": 0,
                "destination": "orthanc" if checked else "",
                "receipt": None,
                "warnings": "[]",
                "error": None,
                "files_deleted": state in ("completed", "cancelled"),
                "last_chunk_at": at(received),
            }
        )
        study_uid = f"2.25.{upload_id.int}"
        if checked:
            # The relay adds an SR note to delivered studies: the modality rule skips it.
            modalities = [modality, "SR"] if state == "completed" else [modality]
            studies.add(
                {
                    "session_id": upload_id,
                    "study_instance_uid": study_uid,
                    "patient_name": "",
                    "patient_id": "",
                    "patient_birth_date": "",
                    "patient_sex": "",
                    "study_date": "",
                    "study_description": "",
                    "accession_number": "",
                    "modalities": json.dumps(modalities),
                    "series": "[]",
                    "instances": 1,
                    "pacs_state": "stored" if state == "completed" else "pending",
                }
            )
        parts = rng.choice((1, 1, 2, 3))
        offset = 0
        for position in range(parts):
            part = size // parts + (size % parts if position == parts - 1 else 0)
            files.add(
                {
                    "session_id": upload_id,
                    "parent_id": None,
                    "path": "",
                    "position": position,
                    "name": f"IMG{position + 1:04d}.dcm",
                    "size": part,
                    "offset": offset,
                    "sha256": f"{rng.getrandbits(256):064x}",
                    "kind": "dicom" if checked else "pending",
                    "reason": "",
                    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.7" if checked else "",
                    "sop_instance_uid": f"{study_uid}.{position + 1}" if checked else "",
                    "study_instance_uid": study_uid if checked else "",
                    "series_instance_uid": f"{study_uid}.0" if checked else "",
                    "pacs_status": "stored" if state == "completed" else "pending",
                    "pacs_reason": "",
                    "added_by_relay": False,
                }
            )
            offset += part
        waits = rng.choice((1, 1, 2)) if checked and rng.random() < 0.04 else 0
        reported = received is not None and rng.random() < 0.8
        timelines.add(
            {
                "upload_id": upload_id,
                "checked_at": at(checked),
                "confirmation_asked_at": None,
                "forwarding_at": at(checked),
                "pacs_waits": waits,
                "last_wait_key": "",
                "manual_retries": 0,
                "last_failure_key": "",
                "retried_failure_key": "",
                "telemetry_at": at(received) if reported else None,
                "network_bytes": size if reported else 0,
                "network_ms": int(transfer.total_seconds() * 1000) if reported else 0,
                "outages": rng.choice((0, 0, 0, 1, 2)) if reported else 0,
                "outage_ms": rng.randint(0, 30_000) if reported else 0,
                "retried_chunks": rng.choice((0, 0, 0, 1, 3)) if reported else 0,
                "counted": None,
                "updated_at": at(ended or received or created),
            }
        )
        if (n + 1) % COPY_BATCH == 0:
            flush()
    flush()
    with connection.cursor() as cursor:
        for model in (UploadSession, Study, UploadFile, UploadTimeline):
            cursor.execute(f"ANALYZE {model._meta.db_table}")
    return counts


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(round(q * (len(ordered) - 1))), len(ordered) - 1)]


def _timed(fn: Any, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=UPLOADS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument(
        "--verify",
        action="store_true",
        help="Compare the rebuilt rollups row by row with the Python recomputation "
        "(upload by upload: 10-20 minutes at 1,000,000 uploads here).",
    )
    parser.add_argument(
        "--explain", action="store_true", help="Print the plans of the admin's `all` queries."
    )
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument(
        "--keep", action="store_true", help="Leave the bench's database for a look afterwards."
    )
    args = parser.parse_args()

    with ExitStack() as stack:
        database_url = fresh_database(stack, keep=args.keep)
        os.environ.update(
            DJANGO_SETTINGS_MODULE="relaypacs.settings.test",
            DATABASE_URL=database_url,
            LOG_LEVEL="WARNING",
        )
        import django

        django.setup()
        from django.conf import settings
        from django.core.management import call_command
        from django.db import connection
        from django.test import Client
        from django.test.utils import override_settings, setup_test_environment
        from django.utils import timezone
        from rest_framework_simplejwt.tokens import RefreshToken

        from accounts.models import Facility, Role, User
        from analytics.models import UploadRollup
        from analytics.selectors import StatsFilters, upload_stats
        from analytics.services import rollups_current, rollups_recomputed, stats_cache_invalidate

        setup_test_environment()
        if os.environ.get("REDIS_URL"):
            # The product's cache with REDIS_URL (the test settings keep one in memory).
            stack.enter_context(
                override_settings(
                    CACHES={
                        "default": {
                            "BACKEND": "django.core.cache.backends.redis.RedisCache",
                            "LOCATION": os.environ["REDIS_URL"],
                            "KEY_PREFIX": "analytics-bench",
                        }
                    }
                )
            )
        call_command("migrate", verbosity=0)
        facilities = [
            Facility.objects.create(name=f"Clinic {i}", code=f"clinic-{i}")
            for i in range(FACILITIES)
        ]
        owners = {
            f.pk: [
                User.objects.create_user(
                    f"bench-{f.code}-{j}",
                    f"{f.code}-{j}@example.org",
                    "x",
                    role=Role.RADIOGRAPHER,
                    facility=f,
                ).pk
                for j in range(OWNERS_PER_FACILITY)
            ]
            for f in facilities
        }
        admin = User.objects.create_user("bench-admin", "a@example.org", "x", role=Role.ADMIN)
        tech = User.objects.get(pk=owners[facilities[0].pk][0])
        started = time.perf_counter()
        counts = fill(
            uploads=args.uploads, facility_owners=owners, now=timezone.now(), rng=random.Random(15)
        )
        fill_seconds = time.perf_counter() - started
        print(f"filled {counts} in {fill_seconds:.1f} s", flush=True)

        # The rollups built as the product builds them: manage.py analytics_rebuild.
        started = time.perf_counter()
        call_command("analytics_rebuild", stdout=io.StringIO())
        rebuild_seconds = time.perf_counter() - started
        rollup_rows = UploadRollup.objects.count()
        print(f"analytics_rebuild: {rollup_rows} rows in {rebuild_seconds:.1f} s", flush=True)
        total = sum(
            UploadRollup.objects.filter(grain="day").values_list("uploads", flat=True).iterator()
        )
        assert total == args.uploads, total
        verify = "not compared with the Python recomputation this run (`--verify` does)"
        if args.verify:
            started = time.perf_counter()
            expected, _ = rollups_recomputed()
            python_seconds = time.perf_counter() - started
            current = rollups_current()
            differing = sorted(
                (k for k in expected.keys() | current.keys() if expected.get(k) != current.get(k)),
                key=str,
            )
            for key in differing[:3]:
                print("differs:", key, current.get(key), expected.get(key))
            assert not differing, f"{len(differing)} rebuilt rows differ from a recomputation"
            del current
            del expected
            verify = (
                "every row equal to the upload-by-upload recomputation in Python "
                f"(`rollups_recomputed`, which alone took {python_seconds:.0f} s, reads only)"
            )
            print(verify, flush=True)
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE analytics_uploadrollup")

        def client(user: Any) -> Client:
            token = RefreshToken.for_user(user).access_token
            return Client(HTTP_AUTHORIZATION=f"Bearer {token}")

        periods = ("1w", "2w", "1m", "3m", "6m", "all")
        results: list[tuple[str, str, float, float, float, float, int]] = []
        for who, user in (("admin", admin), ("radiographer", tech)):
            c = client(user)
            for period in periods:
                timings: list[float] = []

                def uncached(
                    c: Client = c, period: str = period, timings: list[float] = timings
                ) -> None:
                    # A new cache version makes every cached answer unreachable, as an
                    # upload's end does (one cache write before the timed request).
                    stats_cache_invalidate()
                    t0 = time.perf_counter()
                    answer = c.get("/api/v1/upload/stats", {"period": period})
                    timings.append((time.perf_counter() - t0) * 1000)
                    assert answer.status_code == 200, answer.content[:500]
                    assert answer.json()["cached"] is False

                uncached()  # warm
                timings.clear()
                for _ in range(args.repeats):
                    uncached()
                # The queries of one answer (the test client's request resets the log).
                queries: list[tuple[str, Any]] = []

                def keep(
                    execute: Any, sql: str, params: Any, *rest: Any, queries: list[Any] = queries
                ) -> Any:
                    queries.append((sql, params))
                    return execute(sql, params, *rest)

                with connection.execute_wrapper(keep):
                    upload_stats(user=user, filters=StatsFilters(period=period))
                plain = list(timings)
                hits = _timed(
                    lambda c=c, period=period: c.get("/api/v1/upload/stats", {"period": period}),
                    args.repeats,
                )
                assert c.get("/api/v1/upload/stats", {"period": period}).json()["cached"]
                results.append(
                    (
                        who,
                        period,
                        statistics.median(plain),
                        percentile(plain, 0.95),
                        statistics.median(hits),
                        percentile(hits, 0.95),
                        len(queries),
                    )
                )
                print(
                    f"{who:13s} {period:4s} p50 {results[-1][2]:7.1f} ms  "
                    f"p95 {results[-1][3]:7.1f} ms  cached p95 {results[-1][5]:5.1f} ms  "
                    f"{results[-1][6]} queries",
                    flush=True,
                )
                if args.explain and who == "admin" and period == "all":
                    with connection.cursor() as cursor:
                        for sql, params in queries:
                            if "analytics_uploadrollup" not in sql:
                                continue
                            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
                            print("\n".join(r[0] for r in cursor.fetchall()), "\n")
        c = client(admin)
        first_bytes, wholes, lines = [], [], 0
        for _ in range(max(args.repeats // 3, 3)):
            t0 = time.perf_counter()
            answer = c.get("/api/v1/upload/stats/export", {"period": "1m"})
            stream = iter(answer.streaming_content)  # type: ignore[attr-defined]  # streamed
            next(stream)
            next(stream)  # the header, then the first row
            first_bytes.append((time.perf_counter() - t0) * 1000)
            lines = 2 + sum(1 for _ in stream)
            wholes.append((time.perf_counter() - t0) * 1000)
        load = os.getloadavg()
        info = machine.machine_info()
        cache_backend = settings.CACHES["default"]["BACKEND"].rsplit(".", 1)[-1]
        section = [
            f"## Upload statistics over 1,000,000 real uploads, run of {info['date']} (issue 15)",
            "",
            f"`bench/analytics_stats.py`: {counts['uploads']:,} uploads with "
            f"{counts['files']:,} files, {counts['studies']:,} studies and "
            f"{counts['timelines']:,} event timelines, written with COPY in "
            f"{fill_seconds:.0f} s into a database of their own, over {DAYS} days, "
            f"{FACILITIES} facilities of uneven size, {len(MODALITIES)} modalities, "
            "4 service levels, every outcome (completed, failed by the checks or the PACS, "
            "cancelled, in progress). The rollups built from them by `manage.py "
            f"analytics_rebuild` (set-based SQL): {rollup_rows:,} rows in "
            f"{rebuild_seconds:.1f} s; {verify}.",
            "",
            f"Machine: {info['nproc']} cores ({info['cpu']}), {info['ram']} RAM, "
            f"Python {info['python']}; {machine.code_version(REPO)}. Shared with other "
            f"work: load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end.",
            "",
            f"{args.repeats} requests per line through Django's whole stack in one process "
            "(middleware, DRF, JWT). Uncached: the cache version is changed before each "
            "request (what an upload's end does), so every request misses and reads the "
            f"rollups; cached: the same request again ({cache_backend}).",
            "",
            "| Who | Period | p50 | p95 | cached p50 | cached p95 | queries |",
            "|---|---|---|---|---|---|---|",
            *[
                f"| {w} | {p} | {a:.1f} ms | {b:.1f} ms | {ca:.1f} ms | {cb:.1f} ms | {q} |"
                for w, p, a, b, ca, cb, q in results
            ],
            "",
            f"One-month export (admin, {lines:,} lines): first row after p50 "
            f"{statistics.median(first_bytes):.1f} ms (max {max(first_bytes):.1f} ms), whole "
            f"file p50 {statistics.median(wholes):.1f} ms. Goals: p95 < {GOAL_P95_MS} ms, "
            f"first byte < {GOAL_FIRST_BYTE_MS} ms.",
            "",
        ]
        print("\n".join(section))
        if not args.no_record:
            with RESULTS.open("a") as handle:
                handle.write("\n" + "\n".join(section))


if __name__ == "__main__":
    main()
