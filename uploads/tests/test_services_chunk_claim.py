"""A chunk PUT's claim (uploads.services.chunks._claim) beside a complete or a restore's
reconcile that forgets the chunk's row between the claim's INSERT and its UPDATE. Real
PostgreSQL, real files."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from uploads.models import UploadChunk, UploadChunkCounter
from uploads.services import chunk_store
from uploads.services.recovery import upload_chunks_forget
from uploads.tests.helpers import content_md5
from uploads.tests.test_services_complete_durability import CHUNK, _local, _new_upload


@pytest.mark.django_db
def test_a_claim_whose_row_is_forgotten_between_its_insert_and_update_is_claimed_anew(
    user, settings, tmp_path
):
    _local(settings, tmp_path, "complete")
    data = bytes(range(256)) * (CHUNK // 256)
    session = _new_upload(user, data)
    receipt = chunk_store(
        session=session,
        index=0,
        body=io.BytesIO(data),
        length=len(data),
        content_md5=content_md5(data),
    )
    assert receipt.bytes_received == len(data)
    forgotten: list[bool] = []

    def forget_before_the_update(
        execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        if not forgotten and sql.startswith("UPDATE") and "times_received" in sql:
            # The chunk's INSERT met its row; a complete forgets it (lost in a power cut)
            # before this UPDATE counts the arrival.
            forgotten.append(
                upload_chunks_forget(upload_id=session.pk, size=session.total_size, lost=[0])
            )
        return execute(sql, params, many, context)

    with connection.execute_wrapper(forget_before_the_update):
        receipt = chunk_store(
            session=session,
            index=0,
            body=io.BytesIO(data),
            length=len(data),
            content_md5=content_md5(data),
        )

    assert forgotten == [True]
    assert not receipt.duplicate  # written again: the forgotten bytes may be gone
    assert receipt.bytes_received == len(data)
    row = UploadChunk.objects.get(session=session, index=0)
    assert row.stored and row.times_received == 1
    assert UploadChunkCounter.objects.get(session=session).bytes_received == len(data)
