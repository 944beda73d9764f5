"""Uploads receiving before the chunk counter existed start from their stored chunks in the
migration uploads 0006 (run for real with Django's migration executor)."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from accounts.tests.factories import UserFactory
from uploads.models import UploadChunkCounter

pytestmark = pytest.mark.django_db

BEFORE = ("uploads", "0005_upload_facility")


def test_uploads_receiving_before_the_counter_count_their_stored_chunks():
    owner = UserFactory()
    executor = MigrationExecutor(connection)
    executor.migrate([BEFORE])
    old_apps = executor.loader.project_state(BEFORE).apps
    old_upload = old_apps.get_model("uploads", "UploadSession")
    old_chunk = old_apps.get_model("uploads", "UploadChunk")
    chunk = 256 * 1024
    halfway = old_upload.objects.create(
        owner_id=owner.pk, total_size=3 * chunk, chunk_size=chunk, total_chunks=3
    )
    untouched = old_upload.objects.create(
        owner_id=owner.pk, total_size=chunk, chunk_size=chunk, total_chunks=1
    )
    for index, size, stored in ((0, chunk, True), (2, chunk, True), (1, chunk, False)):
        old_chunk.objects.create(
            session_id=halfway.pk, index=index, size=size, md5="0" * 32, stored=stored
        )
    with connection.cursor() as cursor:  # PostgreSQL alters no table with rows of unchecked FKs
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert UploadChunkCounter.objects.get(session_id=halfway.pk).bytes_received == 2 * chunk
    assert not UploadChunkCounter.objects.filter(session_id=untouched.pk).exists()
