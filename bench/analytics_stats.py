"""Benchmark of the upload statistics (issue 15): ``GET /api/v1/upload/stats`` for each
period and the time to first byte of a one-month CSV export, over rollups equivalent to
1,000,000 uploads.

The rollups are written with PostgreSQL ``COPY`` into a new database
``<DATABASE_URL's name>_analytics_bench`` (dropped at the end): 1,000,000 uploads spread
over the last 365 days, 20 facilities, 8 modalities, 4 service levels and 4 outcomes in
realistic shares, one row per non-empty bucket (what the domain events would have left).
Requests go through Django's whole stack in this process (middleware, DRF, JWT
authentication), as an administrator (every facility and the facility table) and as a
radiographer (one facility). The statistics' cache is dropped before every request, so
the figures are of the rollup queries, not of a cache hit (a cached answer is measured
apart).

Usage: ``DATABASE_URL=postgres://... .venv/bin/python bench/analytics_stats.py
[--uploads N] [--repeats N] [--no-record]``.
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
GOAL_P95_MS = 100
GOAL_FIRST_BYTE_MS = 200
BENCH_DB_SUFFIX = "_analytics_bench"


def fresh_database(stack: ExitStack) -> str:
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

    stack.callback(drop)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def _split(total: int, shares: dict[str, float], rng: random.Random) -> dict[str, int]:
    """``total`` split by ``shares`` with some noise; the parts add up to ``total``."""
    weights = {k: v * rng.uniform(0.7, 1.3) for k, v in shares.items()}
    scale = total / sum(weights.values())
    parts = {k: int(w * scale) for k, w in weights.items()}
    rest = total - sum(parts.values())
    for key in rng.sample(list(parts), k=len(parts))[: max(rest, 0)]:
        parts[key] += 1
    return {k: v for k, v in parts.items() if v}


COLUMNS = [
    "uploads",
    "bytes",
    "upload_ms",
    "upload_timed",
    "transfer_ms",
    "transfer_timed",
    "processing_ms",
    "processing_timed",
    "confirmation_ms",
    "confirmation_timed",
    "forwarding_ms",
    "forwarding_timed",
    "pacs_retries",
    "manual_retries",
    "uploads_retried",
    "telemetry_uploads",
    "network_bytes",
    "network_ms",
    "outages",
    "outage_ms",
    "retried_chunks",
]


def fill(*, uploads: int, facility_ids: list[int], today: Any) -> int:
    """COPY the rollup rows of ``uploads`` uploads, in the three grains the domain events
    keep (day, month, trend); returns the number of day-grain rows."""
    from collections import defaultdict

    from django.db import connection

    rng = random.Random(15)
    per_cell = uploads // (DAYS * len(facility_ids))
    extra = uploads - per_cell * DAYS * len(facility_ids)
    buffer = io.StringIO()
    coarse: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0] * len(COLUMNS))
    rows = 0
    for d in range(DAYS):
        day = today - timedelta(days=d)
        month = day.replace(day=1).isoformat()
        for index, facility_id in enumerate(facility_ids):
            cell = per_cell + (1 if d * len(facility_ids) + index < extra else 0)
            for modality, m_count in _split(cell, MODALITIES, rng).items():
                for level, l_count in _split(m_count, LEVELS, rng).items():
                    for outcome, n in _split(l_count, OUTCOMES, rng).items():
                        size = n * rng.randint(20, 300) * 1_000_000
                        done = n if outcome == "completed" else 0
                        up_ms = n * rng.randint(20_000, 240_000) if done else 0
                        retried = rng.randint(0, max(n // 10, 0))
                        values = [
                            n,
                            size,
                            up_ms,
                            done,
                            up_ms // 2,
                            done,
                            up_ms // 6,
                            done,
                            0,
                            0,
                            up_ms // 3,
                            done,
                            retried,
                            0,
                            retried,
                            n,
                            size,
                            up_ms // 2,
                            rng.randint(0, n),
                            rng.randint(0, n * 5000),
                            rng.randint(0, n * 2),
                        ]
                        key = ("day", day.isoformat(), facility_id, modality, level, outcome)
                        buffer.write("\t".join(str(v) for v in (*key, *values)) + "\n")
                        rows += 1
                        for other in (
                            ("month", month, facility_id, modality, level, outcome),
                            ("trend", day.isoformat(), facility_id, "", "", outcome),
                        ):
                            sums = coarse[other]
                            for i, v in enumerate(values):
                                sums[i] += v
    for key, values in coarse.items():
        buffer.write("\t".join(str(v) for v in (*key, *values)) + "\n")
    buffer.seek(0)
    names = ["grain", "day", "facility_id", "modality", "service_level", "outcome", *COLUMNS]
    with connection.cursor() as cursor:
        raw = cursor.connection
        with (
            raw.cursor() as raw_cursor,
            raw_cursor.copy(f"COPY analytics_uploadrollup ({', '.join(names)}) FROM STDIN") as copy,
        ):
            while chunk := buffer.read(1 << 20):
                copy.write(chunk)
        cursor.execute("ANALYZE analytics_uploadrollup")
    return rows


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(round(q * (len(ordered) - 1))), len(ordered) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=UPLOADS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    with ExitStack() as stack:
        database_url = fresh_database(stack)
        os.environ.update(
            DJANGO_SETTINGS_MODULE="relaypacs.settings.test",
            DATABASE_URL=database_url,
            LOG_LEVEL="WARNING",
        )
        import django

        django.setup()
        from django.core.management import call_command
        from django.test import Client
        from django.test.utils import setup_test_environment
        from django.utils import timezone
        from rest_framework_simplejwt.tokens import RefreshToken

        from accounts.models import Facility, Role, User
        from analytics.models import UploadRollup
        from analytics.services import stats_cache_invalidate

        setup_test_environment()
        call_command("migrate", verbosity=0)
        facilities = [
            Facility.objects.create(name=f"Clinic {i}", code=f"clinic-{i}")
            for i in range(FACILITIES)
        ]
        admin = User.objects.create_user("bench-admin", "a@example.org", "x", role=Role.ADMIN)
        tech = User.objects.create_user(
            "bench-tech", "t@example.org", "x", role=Role.RADIOGRAPHER, facility=facilities[0]
        )
        started = time.perf_counter()
        rows = fill(
            uploads=args.uploads,
            facility_ids=[f.pk for f in facilities],
            today=timezone.localdate(),
        )
        fill_seconds = time.perf_counter() - started
        total = sum(
            UploadRollup.objects.filter(grain="day").values_list("uploads", flat=True).iterator()
        )
        assert total == args.uploads, total

        def client(user: Any) -> Client:
            token = RefreshToken.for_user(user).access_token
            return Client(HTTP_AUTHORIZATION=f"Bearer {token}")

        results: list[tuple[str, str, float, float]] = []
        for who, user in (("admin", admin), ("radiographer", tech)):
            c = client(user)
            for period in ("1w", "2w", "1m", "3m", "6m", "all"):
                timings = []
                c.get("/api/v1/upload/stats", {"period": period})  # warm
                for _ in range(args.repeats):
                    stats_cache_invalidate()
                    t0 = time.perf_counter()
                    answer = c.get("/api/v1/upload/stats", {"period": period})
                    timings.append((time.perf_counter() - t0) * 1000)
                    assert answer.status_code == 200, answer.content[:500]
                results.append((who, period, statistics.median(timings), percentile(timings, 0.95)))
                print(
                    f"{who:13s} {period:4s} p50 {results[-1][2]:7.1f} ms  "
                    f"p95 {results[-1][3]:7.1f} ms"
                )
        c = client(admin)
        cached = []
        c.get("/api/v1/upload/stats", {"period": "all"})
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            assert c.get("/api/v1/upload/stats", {"period": "all"}).json()["cached"]
            cached.append((time.perf_counter() - t0) * 1000)
        first_bytes, wholes, lines = [], [], 0
        for _ in range(max(args.repeats // 3, 3)):
            t0 = time.perf_counter()
            answer = c.get("/api/v1/upload/stats/export", {"period": "1m"})
            stream = iter(answer.streaming_content)
            next(stream)
            next(stream)  # the header, then the first row
            first_bytes.append((time.perf_counter() - t0) * 1000)
            lines = 2 + sum(1 for _ in stream)
            wholes.append((time.perf_counter() - t0) * 1000)
        load = os.getloadavg()
        info = machine.machine_info()
        section = [
            f"## Upload statistics, run of {info['date']} (issue 15)",
            "",
            f"`bench/analytics_stats.py`: rollups equivalent to {args.uploads:,} uploads "
            f"({rows:,} day-grain rollup rows, {UploadRollup.objects.count():,} in all "
            f"grains, over {DAYS} days, {FACILITIES} facilities, "
            f"{len(MODALITIES)} modalities, 4 service levels, 4 outcomes), written with COPY "
            f"in {fill_seconds:.1f} s, in PostgreSQL. {args.repeats} requests per line "
            "through Django's whole stack in one process, the cache dropped before each.",
            "",
            f"Machine: {info['nproc']} cores ({info['cpu']}), {info['ram']} RAM, "
            f"Python {info['python']}; {machine.code_version(REPO)}. **Loaded by other "
            f"work** (other helpers' test suites and browsers): load average "
            f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {info['nproc']} cores at "
            "the end, so these are upper bounds.",
            "",
            "| Who | Period | p50 | p95 |",
            "|---|---|---|---|",
            *[f"| {w} | {p} | {a:.1f} ms | {b:.1f} ms |" for w, p, a, b in results],
            "",
            f"A cached answer (admin, all): p50 {statistics.median(cached):.1f} ms, p95 "
            f"{percentile(cached, 0.95):.1f} ms. One-month export ({lines:,} lines): first "
            f"row after p50 {statistics.median(first_bytes):.1f} ms (max "
            f"{max(first_bytes):.1f} ms), whole file p50 {statistics.median(wholes):.1f} ms.",
            f"Goals: p95 < {GOAL_P95_MS} ms, first byte < {GOAL_FIRST_BYTE_MS} ms.",
            "",
        ]
        print("\n".join(section))
        if not args.no_record:
            with RESULTS.open("a") as handle:
                handle.write("\n" + "\n".join(section))


if __name__ == "__main__":
    main()
