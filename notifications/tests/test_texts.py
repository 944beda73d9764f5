"""The words of notifications read as sentences for one study and for several."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from notifications import texts


def test_an_upload_of_several_studies_takes_the_singular_verbs() -> None:
    label = texts.study_label(modalities=["CT", "MR"], studies=2, sent_at=None)
    assert label == "Upload of 2 studies"
    assert texts.upload_completed(label=label, studies=2) == (
        "Upload of 2 studies was received by the PACS",
        "The PACS confirmed every image; the studies can be read there.",
    )
    assert texts.upload_completed(label="CT study", studies=1)[1] == (
        "The PACS confirmed every image; the study can be read there."
    )
    assert "the studies' details" in texts.upload_needs_attention(label=label, studies=2)[1]
    assert (
        texts.upload_needs_attention(label=label)[0]
        == "Upload of 2 studies needs your confirmation"
    )
    assert texts.upload_failed(label=label, error_code="pacs_rejected")[0] == (
        "Upload of 2 studies could not be delivered"
    )


def test_one_study_is_named_by_its_modalities_and_when_it_was_sent() -> None:
    now = timezone.now()
    label = texts.study_label(modalities=["CT", "MR"], studies=1, sent_at=now)
    assert label == f"CT/MR study sent {timezone.localtime(now):%H:%M}"
    assert texts.study_label(modalities=[], studies=1, sent_at=None) == "Study"
    earlier = texts.sent_words(sent_at=now - timedelta(days=3), now=now)
    assert earlier.startswith("sent ") and len(earlier.split()) == 4


def test_a_label_inside_a_sentence_starts_lower_case() -> None:
    assert texts.report_assigned(label="Study sent 10:42", service_level="", pooled=True)[0] == (
        "New study sent 10:42 to report"
    )
    assert texts.report_assigned(
        label="Upload of 2 studies", service_level="stat", pooled=False
    ) == (
        "New upload of 2 studies to report (stat)",
        "The study is on your worklist.",
    )
