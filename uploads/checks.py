"""Start-up checks of the upload storage (run by ``manage.py check``, ``migrate`` and
``serve`` before anything starts)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register

from . import storage


@register("uploads")
def upload_storage_check(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """UPLOAD_STORAGE names a backend; in S3 mode the bucket exists and can be reached
    (one HEAD request). A missing bucket is an error that names it."""
    name = storage.backend_name()
    if name not in storage.BACKENDS:
        return [
            Error(
                f"UPLOAD_STORAGE is '{settings.UPLOAD_STORAGE}', which is not a storage "
                "RelayPACS knows.",
                hint="Set UPLOAD_STORAGE to 'local' (the default) or 's3'.",
                id="uploads.E001",
            )
        ]
    if name != "s3":
        return []
    from .storage import s3

    problem = s3.bucket_problem()
    if problem is None:
        return []
    return [
        Error(
            problem,
            hint="Create the bucket (it is the operator's: the compose stack creates it), or "
            "set S3_BUCKET, S3_ENDPOINT_URL, S3_REGION and the S3 credentials to reach an "
            "existing one.",
            id="uploads.E002",
        )
    ]


@register(Tags.database)
def restore_unfinished_check(
    app_configs: Any = None, databases: Any = None, **kwargs: Any
) -> list[CheckMessage]:
    """The database holds no marker of a restore that did not finish (run by ``migrate``,
    ``migrate_locked`` and so ``serve``, and ``check --database default``)."""
    from django.db import connections

    from .management.backups import RESTORE_MARKER_TABLE

    errors: list[CheckMessage] = []
    for alias in databases or []:
        connection = connections[alias]
        with connection.cursor() as cursor:
            names = connection.introspection.table_names(cursor)
        if RESTORE_MARKER_TABLE in names:
            errors.append(
                Error(
                    "A restore of this database did not finish: run manage.py restore "
                    "again before starting RelayPACS.",
                    hint="`manage.py restore --dry-run <backup>` says which backup it was; "
                    "the restore removes what the unfinished one wrote and starts over.",
                    id="uploads.E003",
                )
            )
    return errors
