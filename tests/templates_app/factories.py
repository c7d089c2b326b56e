"""factory_boy factories. Stateful rows are made through services where the state matters."""

import factory
from django.contrib.auth import get_user_model

from templates_app.models import Account, ImageStore, Template, Zone


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw-123456")


class AccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Account

    name = factory.Sequence(lambda n: f"account{n}")


class ZoneFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Zone

    name = factory.Sequence(lambda n: f"zone{n}")


class ImageStoreFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ImageStore

    zone = factory.SubFactory(ZoneFactory)
    name = factory.Sequence(lambda n: f"store{n}")
    path = factory.LazyFunction(lambda: "/nonexistent")


class TemplateFactory(factory.django.DjangoModelFactory):
    """A bare ACTIVE template row, for tests that do not exercise registration itself."""

    class Meta:
        model = Template

    unique_name = factory.Sequence(lambda n: f"tmpl-{n}")
    name = factory.Sequence(lambda n: f"template {n}")
    format = "QCOW2"
    url = "http://mirror.example/image.qcow2"
    account = factory.SubFactory(AccountFactory)
