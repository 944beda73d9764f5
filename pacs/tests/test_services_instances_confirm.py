from __future__ import annotations

import pytest

from pacs.clients.dicomweb import DicomwebClient
from pacs.clients.orthanc import OrthancClient
from pacs.services import instances_confirm, instances_store

NEVER_SENT_UID = "1.2.826.0.1.3680043.10.543.404"


def by_study(dicom_files) -> dict[str, set[str]]:
    studies: dict[str, set[str]] = {}
    for f in dicom_files:
        studies.setdefault(f.study_instance_uid, set()).add(f.sop_instance_uid)
    return studies


@pytest.mark.parametrize("rest_only", [False, True])
def test_confirm_lists_what_the_pacs_lacks_then_nothing_after_store(
    orthanc_clean, dicom_test_files, to_source, rest_only
):
    files = dicom_test_files[:6]
    target = orthanc_clean.target(dicomweb_url="") if rest_only else orthanc_clean.target()
    expected = by_study(files)
    expected[files[0].study_instance_uid].add(NEVER_SENT_UID)
    all_uids = {uid for uids in expected.values() for uid in uids}

    assert instances_confirm(target=target, sop_instance_uids_by_study=expected) == all_uids

    instances_store(target=target, instances=[to_source(f) for f in files])

    assert instances_confirm(target=target, sop_instance_uids_by_study=expected) == {NEVER_SENT_UID}


def test_confirm_of_an_unknown_study_lists_all_its_instances(orthanc_clean):
    missing = instances_confirm(
        target=orthanc_clean.target(),
        sop_instance_uids_by_study={"1.2.826.0.1.3680043.10.543": {"1.2.3", "1.2.4"}},
    )

    assert missing == {"1.2.3", "1.2.4"}


def test_confirm_falls_back_to_rest_when_qido_is_missing(
    orthanc_clean, dicom_test_files, to_source
):
    files = dicom_test_files[:2]
    instances_store(target=orthanc_clean.target(), instances=[to_source(f) for f in files])
    target = orthanc_clean.target(dicomweb_url=f"{orthanc_clean.url}/no-dicomweb-here")

    assert instances_confirm(target=target, sop_instance_uids_by_study=by_study(files)) == set()


def test_study_listing_pages_through_a_large_study(orthanc_clean, synthetic_dicom, to_source):
    study_uid = "1.2.826.0.1.3680043.10.543.7"
    files = [
        synthetic_dicom(rows=8, columns=8, study_instance_uid=study_uid, instance_number=n)
        for n in range(7)
    ]
    instances_store(target=orthanc_clean.target(), instances=[to_source(f) for f in files])
    expected = {f.sop_instance_uid for f in files}

    with DicomwebClient(orthanc_clean.target()) as dicomweb:
        assert dicomweb.study_sop_instance_uids(study_instance_uid=study_uid, page_size=3) == (
            expected
        )
    with OrthancClient(orthanc_clean.target()) as orthanc:
        assert orthanc.study_sop_instance_uids(study_instance_uid=study_uid, page_size=3) == (
            expected
        )
