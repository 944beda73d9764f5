import factory
from pydicom.uid import generate_uid

from accounts.tests.factories import FacilityFactory, UserFactory
from reports.models import Report


class ReportFactory(factory.django.DjangoModelFactory):
    """A report as upload.completed opens it (``assigned``), without its uploads."""

    class Meta:
        model = Report

    facility = factory.SubFactory(FacilityFactory)
    study_instance_uid = factory.LazyFunction(generate_uid)
    sender = factory.SubFactory(UserFactory, facility=factory.SelfAttribute("..facility"))
    service_level = "routine"
    patient_name = "Synthetic^Test"
    patient_id = "RELAYPACS-TEST"
    study_date = "20250102"
    study_description = "CT chest"
    modality = "CT"
    clinical_notes = "Cough for three weeks."
