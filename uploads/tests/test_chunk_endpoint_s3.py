"""The lean chunk endpoint in S3 mode (a real moto server): a chunk the bucket cannot take
is answered 503 ``storage_unavailable`` with the S3 error's own Retry-After (a minute, not
server_busy's 5 s), and nothing of it is acknowledged."""

from __future__ import annotations

import pytest

from accounts.models import Role
from accounts.tests.factories import UserFactory
from uploads.models import UploadChunk
from uploads.storage.s3 import S3_RETRY_AFTER_SECONDS

from .test_chunk_endpoint import CHUNK, asgi_put, upload_with_chunk

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_chunk_the_bucket_refuses_is_503_with_the_s3_retry_after(s3_settings, settings):
    upload, data, headers, path = upload_with_chunk(UserFactory(role=Role.CLINICIAN))
    status, _, body = asgi_put(f"{path}0", data, headers)
    assert status == 200 and body["bytes_received"] == CHUNK

    settings.S3_BUCKET = "relaypacs-no-such-bucket"  # the bucket is gone (or unreachable)
    status, response_headers, body = asgi_put(f"{path}1", data, headers)

    assert status == 503
    assert response_headers["retry-after"] == str(S3_RETRY_AFTER_SECONDS) == "60"
    assert body["error"]["code"] == "storage_unavailable"
    assert "nothing was stored" in body["error"]["message"]
    # Claimed (a row, so that a retry with other bytes is a conflict) but not stored.
    stored = UploadChunk.objects.filter(session_id=upload["upload_id"], stored=True)
    assert set(stored.values_list("index", flat=True)) == {0}

    # The bucket back: the same chunk sent again is stored.
    settings.S3_BUCKET = s3_settings.bucket
    status, _, body = asgi_put(f"{path}1", data, headers)
    assert status == 200 and body["bytes_received"] == 2 * CHUNK
