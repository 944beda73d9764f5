from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured, ValidationError

from pacs.models import PacsDestination
from pacs.selectors import PacsTarget, pacs_health, pacs_mode, pacs_target, pacs_targets


@pytest.mark.django_db
def test_environment_target_comes_first_then_enabled_destinations_by_priority(settings):
    settings.PACS_DICOMWEB_URL = "https://pacs.example.org/dicom-web"
    settings.PACS_ORTHANC_URL = ""
    settings.PACS_NAME = "main"
    settings.PACS_USERNAME = "relay"
    settings.PACS_PASSWORD = "secret"
    late = PacsDestination.objects.create(name="late", dicomweb_url="https://b/dw", priority=20)
    early = PacsDestination.objects.create(name="early", orthanc_url="https://a", priority=10)
    PacsDestination.objects.create(name="off", dicomweb_url="https://c/dw", enabled=False)

    targets = pacs_targets()

    assert [(t.key, t.name) for t in targets] == [
        ("env:main", "main"),
        (f"db:{early.pk}", "early"),
        (f"db:{late.pk}", "late"),
    ]
    assert (targets[0].username, targets[0].password) == ("relay", "secret")
    assert "secret" not in repr(targets[0])
    assert pacs_target(key=f"db:{late.pk}") == targets[2]
    assert pacs_target(key="db:0") is None


@pytest.mark.django_db
def test_without_environment_urls_only_destinations_are_targets(settings):
    settings.PACS_DICOMWEB_URL = ""
    settings.PACS_ORTHANC_URL = ""
    PacsDestination.objects.create(name="only", dicomweb_url="https://a/dw")

    assert [t.name for t in pacs_targets()] == ["only"]


def test_pacs_mode_is_validated(settings):
    settings.PACS_MODE = "all"
    assert pacs_mode() == "all"
    settings.PACS_MODE = "broadcast"
    with pytest.raises(ImproperlyConfigured):
        pacs_mode()


def test_destination_validation_explains_what_is_missing():
    destination = PacsDestination(name="x", token="t", username="u", client_key="/k")

    with pytest.raises(ValidationError) as caught:
        destination.clean()

    assert set(caught.value.message_dict) == {"dicomweb_url", "token", "client_cert"}


def test_health_of_a_running_pacs_is_ok(orthanc):
    orthanc.start()

    assert pacs_health(target=orthanc.target())["state"] == "ok"
    assert pacs_health(target=orthanc.target(dicomweb_url=""))["state"] == "ok"
    fallback = pacs_health(target=orthanc.target(dicomweb_url=f"{orthanc.url}/nothing-here"))
    assert fallback["state"] == "ok"
    assert "404" in fallback["detail"]


def test_health_reports_refused_credentials_and_missing_urls(orthanc):
    orthanc.start()

    refused = pacs_health(target=orthanc.target(password="wrong"))
    nothing = pacs_health(target=PacsTarget(key="k", name="empty"))

    assert (refused["state"], "401" in refused["detail"]) == ("degraded", True)
    assert nothing == {"name": "empty", "state": "degraded", "detail": nothing["detail"]}
    assert nothing["detail"]


@pytest.mark.django_db
def test_the_test_orthanc_can_be_the_environment_pacs(orthanc, settings):
    for name, value in orthanc.settings_overrides().items():
        setattr(settings, name, value)
    settings.PACS_NAME = "embedded"

    [target] = pacs_targets()

    assert target.key == "env:embedded"
    assert pacs_health(target=target)["state"] == "ok"
