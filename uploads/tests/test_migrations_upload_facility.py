"""Uploads made before the upload recorded its facility take their owner's facility in the
migration uploads 0005 (run for real with Django's migration executor)."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from accounts.tests.factories import FacilityFactory, UserFactory
from uploads.models import UploadSession

pytestmark = pytest.mark.django_db

BEFORE = ("uploads", "0004_upload_last_chunk_at")


def test_existing_uploads_take_their_owners_facility():
    clinic = FacilityFactory()
    owner, loner = UserFactory(facility=clinic), UserFactory(facility=None)
    executor = MigrationExecutor(connection)
    executor.migrate([BEFORE])
    old_upload = executor.loader.project_state(BEFORE).apps.get_model("uploads", "UploadSession")
    made = [
        old_upload.objects.create(
            owner_id=user.pk, total_size=10, chunk_size=256 * 1024, total_chunks=1
        )
        for user in (owner, loner)
    ]
    with connection.cursor() as cursor:  # PostgreSQL alters no table with rows of unchecked FKs
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())
    assert UploadSession.objects.get(pk=made[0].pk).facility == clinic
    assert UploadSession.objects.get(pk=made[1].pk).facility is None
