"""What a failed upload tells the technician is plain words: no API field or code from the
public contract (docs/upload-api.md) in its message or hint, and the hint names what the
app offers (send the other files, or send again after copying the damaged ones)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from uploads.tests.helpers import sample_paths
from uploads.tests.test_pipeline_e2e import FINAL, send_upload, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

DOC = Path(__file__).resolve().parents[2] / "docs" / "upload-api.md"


def api_names() -> set[str]:
    """Every snake_case name the contract puts in backticks: codes and fields."""
    return {n for n in re.findall(r"`([a-z][a-z0-9_.]*)`", DOC.read_text()) if "_" in n}


def test_a_damaged_file_fails_the_study_in_words_that_name_the_apps_choices(
    api, celery_worker, orthanc_clean, tmp_path
):
    good = sample_paths(["test_files/CT_small.dcm"])[0]
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[:-300])
    upload = send_upload(api, [good, truncated])
    status = wait_for(api, upload["upload_id"], FINAL)
    assert status["error"]["code"] == "invalid_files", status
    words = f"{status['error']['message']} {status['error']['hint']}"
    names = api_names()
    assert "rejected_files" in names and "allow_partial" in names, "the contract lists them"
    assert [n for n in names if re.search(rf"\b{re.escape(n)}\b", words)] == [], words
    assert "send the other files" in status["error"]["hint"], words
