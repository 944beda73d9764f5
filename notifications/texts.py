"""The words of notifications: pure functions of facts that carry no patient data.

A study is named by its modality and when it was sent ("CT study sent 10:42"), never by
the patient's name, ID or birth date: titles end up on lock screens (Web Push, part 2).
Times are in the server's TIME_ZONE; the messages also carry ``created_at`` for clients.
"""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone


def sent_words(*, sent_at: datetime | None, now: datetime | None = None) -> str:
    """``sent 10:42`` today, ``sent 30 Nov 10:42`` another day ("" when unknown)."""
    if sent_at is None:
        return ""
    local = timezone.localtime(sent_at)
    today = timezone.localtime(now or timezone.now()).date()
    if local.date() == today:
        return f"sent {local:%H:%M}"
    return f"sent {local.day} {local:%b %H:%M}"


def study_words(*, modalities: list[str], studies: int = 1) -> str:
    """``CT study``, ``CT/MR study``, ``Upload of 2 studies`` or ``Study``: a subject the
    titles' singular verbs fit ("... was received by the PACS")."""
    if studies > 1:
        return f"Upload of {studies} studies"
    shown = [m for m in modalities if m][:3]
    return f"{'/'.join(shown)} study" if shown else "Study"


def study_label(*, modalities: list[str], studies: int, sent_at: datetime | None) -> str:
    words = study_words(modalities=modalities, studies=studies)
    sent = sent_words(sent_at=sent_at)
    return f"{words} {sent}" if sent else words


def upload_completed(*, label: str, studies: int = 1) -> tuple[str, str]:
    them = "the studies can" if studies > 1 else "the study can"
    return (
        f"{label} was received by the PACS",
        f"The PACS confirmed every image; {them} be read there.",
    )


# The body of an ``upload_failed`` notification, by the upload's error code: fixed
# sentences only. The error's own message is not used: some carry the PACS's name, file
# counts or, from an archive, names a person chose; the app shows it inside the upload.
UPLOAD_FAILED_BODIES = {
    "pacs_unreachable": "The PACS could not be reached for too long. Open the upload to retry it.",
    "pacs_unavailable": "The PACS could not be reached. Open the upload to retry it.",
    "pacs_not_listing": "The PACS did not list every image. Open the upload to retry it.",
    "pacs_rejected": "The PACS refused the study. Open the upload to see what to do.",
    "pacs_refused_instances": "The PACS refused some of the images. Open the upload to see "
    "what to do.",
    "no_pacs_configured": "No PACS is configured to receive it. Tell your RelayPACS administrator.",
    "forwarding_failed": "Sending it to the PACS stopped. Open the upload to retry it.",
    "upload_damaged": "The server's copy could not be read back. Upload the study again.",
    "instance_source_invalid": "The server's copy could not be read back. Upload the study again.",
    "processing_failed": "The server could not check its files. Upload the study again.",
    "upload_expired": "It stopped receiving data and expired. Start the upload again.",
    "no_dicom_files": "None of its files is a DICOM image. Open the upload to see what to do.",
    "invalid_files": "Some of its files are damaged or not DICOM. Open the upload to see what "
    "to do.",
    "archive_corrupt": "An archive in it is damaged. Open the upload to see what to do.",
    "archive_encrypted": "An archive in it is protected by a password. Open the upload to "
    "see what to do.",
    "archive_unsupported": "An archive in it cannot be unpacked. Open the upload to see what "
    "to do.",
    "unsafe_archive": "An archive in it was refused as unsafe. Open the upload to see what to do.",
    "archive_too_large": "Its archives are too large to unpack. Open the upload to see what to do.",
    "archive_too_many_entries": "Its archives hold too many files. Open the upload to see "
    "what to do.",
    "archive_ratio_exceeded": "An archive in it was refused as unsafe. Open the upload to "
    "see what to do.",
}
UPLOAD_FAILED_DEFAULT_BODY = "The upload stopped. Open it to see what to do."


def upload_failed(*, label: str, error_code: str) -> tuple[str, str]:
    """Title and body; the body is a fixed sentence chosen by ``error_code``."""
    return (
        f"{label} could not be delivered",
        UPLOAD_FAILED_BODIES.get(error_code, UPLOAD_FAILED_DEFAULT_BODY),
    )


def upload_needs_attention(*, label: str, studies: int = 1) -> tuple[str, str]:
    details = "the studies' details" if studies > 1 else "the study's details"
    return (
        f"{label} needs your confirmation",
        f"The files do not all match {details}. Open the upload to check and "
        "confirm it, or cancel it.",
    )


def report_assigned(*, label: str, service_level: str, pooled: bool) -> tuple[str, str]:
    where = "the reading pool" if pooled else "your worklist"
    level = f" ({service_level})" if service_level and service_level != "routine" else ""
    return (f"New {_mid(label)} to report{level}", f"The study is on {where}.")


def _mid(label: str) -> str:
    """The label inside a sentence: "Study sent 10:42" becomes "study sent 10:42"."""
    if label.startswith("Study"):
        return "study" + label[5:]
    return "upload" + label[6:] if label.startswith("Upload") else label


def report_ready(*, label: str) -> tuple[str, str]:
    return (
        f"Report ready for the {_mid(label)}",
        "The signed report is available; its PDF can be opened in the app.",
    )


def report_answered(*, label: str) -> tuple[str, str]:
    """A fixed body: the sender's answer is free text that may name the patient, so it is
    shown only on the report page, never in a notification."""
    return (
        f"Answer about the {_mid(label)}",
        f"The sender answered your question about the {_mid(label)}. Open the report to read it.",
    )


def report_question(*, label: str) -> tuple[str, str]:
    """A fixed body: the radiologist's question is free text that may name the patient,
    so it is shown only inside the app (the reports API), never in a notification."""
    return (
        f"Question about the {_mid(label)}",
        f"The radiologist asked a question about the {_mid(label)}. Open the report to answer.",
    )
