"""Building InstanceSource objects from files and bytes for the pacs tests."""

from __future__ import annotations

import io
from pathlib import Path

from pacs.services import InstanceSource


def source_from_path(
    path: Path, *, sop_instance_uid: str, study_instance_uid: str
) -> InstanceSource:
    return InstanceSource(
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=study_instance_uid,
        size=path.stat().st_size,
        open=lambda: path.open("rb"),
    )


def source_from_bytes(
    data: bytes, *, sop_instance_uid: str, study_instance_uid: str = "1.2.826.0.1.3680043.10.1"
) -> InstanceSource:
    return InstanceSource(
        sop_instance_uid=sop_instance_uid,
        study_instance_uid=study_instance_uid,
        size=len(data),
        open=lambda: io.BytesIO(data),
    )
