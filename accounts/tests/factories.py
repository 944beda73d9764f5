import factory

from accounts.models import Facility, Role, User


class FacilityFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Facility
        django_get_or_create = ["code"]

    name = factory.Sequence(lambda n: f"Clinic {n}")
    code = factory.Sequence(lambda n: f"clinic-{n}")
    issuer_of_patient_id = "RELAYPACS.TEST"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ["username"]
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"tech{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.org")
    role = Role.RADIOGRAPHER
    facility = factory.SubFactory(FacilityFactory)
    password = factory.PostGenerationMethodCall("set_password", "correct horse battery")

    @factory.post_generation
    def save_password(self, create, extracted, **kwargs):
        if create:
            self.save()
