"""A chunk costs the same at the start of an upload and thousands of chunks into it.

Both chunk paths (the DRF view with an access token, the lean endpoint with an upload
token) are measured at chunk 10 and at chunk 2,000 of one upload: the statements they run
and, on PostgreSQL, the table rows those statements read (each replayed under EXPLAIN
ANALYZE in a transaction that is rolled back). bytes_received stays exact throughout,
also when chunks of one upload race each other.
"""

from __future__ import annotations

import io
import json
import re
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.models import Role
from accounts.tests.factories import UserFactory
from uploads import chunk_endpoint, services
from uploads.models import UploadChunkCounter, UploadSession
from uploads.selectors import upload_status
from uploads.tests.conftest import client_for
from uploads.tests.helpers import content_md5
from uploads.tests.test_chunk_endpoint import asgi_put

# The lean endpoint's thread has its own connection: the data must be committed.
pytestmark = pytest.mark.django_db(transaction=True)

# Small chunks, so that 2,000 of them cost little; the cost measured is per request.
CHUNK = 1024
EARLY, LATE = 10, 2000
TOTAL_CHUNKS = LATE + 1

Statement = tuple[str, Any]


@pytest.fixture(autouse=True)
def _small_chunks(settings: Any) -> None:
    settings.UPLOAD_MIN_CHUNK_SIZE = CHUNK


def chunk_bytes(index: int) -> bytes:
    return index.to_bytes(4, "big") * (CHUNK // 4)


def new_upload(client: Any) -> dict[str, Any]:
    response = client.post(
        "/api/v1/upload/init",
        {"files": [{"name": "a.dcm", "size": CHUNK * TOTAL_CHUNKS}], "chunk_size": CHUNK},
        format="json",
    )
    assert response.status_code == 201, response.json()
    return response.json()


def store_directly(upload_id: str, indexes: range) -> None:
    """Chunks that only fill the upload, through the same service, without HTTP (and in one
    transaction, to spare the database a commit per chunk)."""
    session = UploadSession.objects.get(pk=upload_id)
    with transaction.atomic():
        for index in indexes:
            data = chunk_bytes(index)
            services.chunk_store(
                session=session,
                index=index,
                body=io.BytesIO(data),
                length=len(data),
                content_md5=content_md5(data),
            )


def recent_last_chunk(upload_id: str) -> None:
    """The upload's last_chunk_at is moved at most once a minute; make it fresh, so that
    neither measured chunk is the one that moves it."""
    UploadSession.objects.filter(pk=upload_id).update(last_chunk_at=timezone.now())


class StatementLog:
    """An execute wrapper (``connection.execute_wrapper``) that records each statement."""

    def __init__(self) -> None:
        self.statements: list[Statement] = []

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        self.statements.append((sql, params))
        return execute(sql, params, many, context)


def shape(sql: str) -> str:
    """A statement without its literals (the ORM inlines LIMIT and the like)."""
    return re.sub(r"\b\d+\b", "N", sql)


def aggregates_over_chunks(statements: list[Statement]) -> list[str]:
    return [
        sql
        for sql, _ in statements
        if "uploadchunk" in sql.lower()
        and "uploadchunkcounter" not in sql.lower()
        and re.search(r"\b(SUM|COUNT|MAX|MIN|AVG)\s*\(", sql, re.IGNORECASE)
    ]


def rows_read(statements: list[Statement]) -> int:
    """The table rows the statements read (returned or filtered out by every scan), each
    replayed under EXPLAIN ANALYZE and rolled back. Index scans are forced where an index
    exists, so that a plan does not change with the size of a table between two counts."""

    def scanned(node: dict[str, Any]) -> int:
        rows = 0
        if "Relation Name" in node and node["Node Type"].endswith("Scan"):
            rows += (
                node.get("Actual Rows", 0)
                + node.get("Rows Removed by Filter", 0)
                + node.get("Rows Removed by Index Recheck", 0)
            ) * node.get("Actual Loops", 1)
        return rows + sum(scanned(child) for child in node.get("Plans", []))

    total = 0
    for sql, params in statements:
        if not re.match(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", sql, re.IGNORECASE):
            continue
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
            cursor.execute("SET LOCAL enable_bitmapscan = off")
            cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
            plan = cursor.fetchone()[0]
            plan = json.loads(plan) if isinstance(plan, str) else plan
            total += scanned(plan[0]["Plan"])
            transaction.set_rollback(True)
    return total


class Cost:
    """What one chunk request cost: its statements and, on PostgreSQL, the rows they read,
    replayed right after the request (before the upload grows further)."""

    def __init__(self, statements: list[Statement]) -> None:
        self.shapes = [shape(sql) for sql, _ in statements]
        self.aggregates = aggregates_over_chunks(statements)
        self.rows = rows_read(statements) if connection.vendor == "postgresql" else None


def assert_same_cost(early: Cost, late: Cost) -> None:
    assert late.shapes == early.shapes
    assert early.aggregates == late.aggregates == []
    assert late.rows == early.rows, (early.rows, late.rows)


def test_a_chunk_through_the_drf_view_costs_the_same_at_chunk_10_and_at_chunk_2000():
    client = client_for(UserFactory(role=Role.CLINICIAN))
    upload = new_upload(client)
    path = f"/api/v1/upload/{upload['upload_id']}/chunk"

    def measured(index: int) -> tuple[list[str], Cost, int]:
        recent_last_chunk(upload["upload_id"])
        data = chunk_bytes(index)
        log = StatementLog()  # with the parameters, to replay the statements
        with CaptureQueriesContext(connection) as captured, connection.execute_wrapper(log):
            response = client.put(
                f"{path}?index={index}",
                data=data,
                content_type="application/octet-stream",
                HTTP_CONTENT_MD5=content_md5(data),
            )
        assert response.status_code == 200, response.json()
        queries = [shape(q["sql"]) for q in captured.captured_queries]  # BEGIN, COMMIT too
        return queries, Cost(log.statements), response.json()["bytes_received"]

    store_directly(upload["upload_id"], range(EARLY))
    early_queries, early, early_received = measured(EARLY)
    store_directly(upload["upload_id"], range(EARLY + 1, LATE))
    late_queries, late, late_received = measured(LATE)

    assert (early_received, late_received) == ((EARLY + 1) * CHUNK, TOTAL_CHUNKS * CHUNK)
    assert len(late_queries) == len(early_queries)
    assert_same_cost(early, late)


@contextmanager
def endpoint_statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[StatementLog]:
    """The statements of the lean endpoint's work, recorded on its one thread's connection."""
    single = ThreadPoolExecutor(max_workers=1)
    monkeypatch.setattr(chunk_endpoint, "_executor", single)
    log = StatementLog()
    single.submit(lambda: connections["default"].execute_wrappers.append(log)).result()
    try:
        yield log
    finally:
        single.submit(lambda: connections["default"].execute_wrappers.remove(log)).result()
        single.submit(chunk_endpoint._release_connections).result()  # noqa: SLF001
        single.shutdown()


def test_a_chunk_through_the_lean_endpoint_costs_the_same_at_chunk_10_and_at_chunk_2000(
    monkeypatch,
):
    upload = new_upload(client_for(UserFactory(role=Role.CLINICIAN)))
    path = f"/api/v1/upload/{upload['upload_id']}/chunk"

    def measured(log: StatementLog, index: int) -> tuple[Cost, int]:
        recent_last_chunk(upload["upload_id"])
        data = chunk_bytes(index)
        log.statements.clear()
        status, _, body = asgi_put(
            f"{path}?index={index}",
            data,
            {"Authorization": f"Bearer {upload['upload_token']}", "Content-MD5": content_md5(data)},
        )
        assert status == 200, body
        assert log.statements, "the endpoint's statements were not recorded"
        return Cost(list(log.statements)), body["bytes_received"]

    with endpoint_statements(monkeypatch) as log:
        store_directly(upload["upload_id"], range(EARLY))
        early, early_received = measured(log, EARLY)
        store_directly(upload["upload_id"], range(EARLY + 1, LATE))
        late, late_received = measured(log, LATE)

    assert (early_received, late_received) == ((EARLY + 1) * CHUNK, TOTAL_CHUNKS * CHUNK)
    assert_same_cost(early, late)


def test_bytes_received_stays_exact_when_chunks_and_their_retries_race():
    user = UserFactory(role=Role.CLINICIAN)
    upload = new_upload(client_for(user))
    chunks = 64
    answers: list[int] = []
    lock = threading.Lock()

    def send(index: int) -> None:
        data = chunk_bytes(index)
        try:
            receipt = services.chunk_receive(
                upload_id=uuid.UUID(upload["upload_id"]),
                upload_token=upload["upload_token"],
                index=str(index),
                data=data,
                length=len(data),
                content_md5=content_md5(data),
            )
            with lock:
                answers.append(receipt.bytes_received)
        finally:
            connection.close()

    # Every chunk twice, from four threads at once: a retry racing its first send.
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(send, [i for i in range(chunks) for _ in (0, 1)]))

    total = chunks * CHUNK
    session = UploadSession.objects.get(pk=upload["upload_id"])
    assert UploadChunkCounter.objects.get(session=session).bytes_received == total
    assert upload_status(session=session)["bytes_received"] == total
    assert max(answers) == total and all(0 < a <= total for a in answers)
