"""Copying a template to more zones (CloudStack's copyTemplate): POST /templates/{id}/copy/."""

import pytest

from templates_app.models import TemplateStoreRef

from .factories import ImageStoreFactory, ZoneFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def zone_b(store):
    zone = ZoneFactory(name="zone-b")
    ImageStoreFactory(zone=zone, name="store-b", path=store.path)
    return zone


def copy_url(template) -> str:
    return f"/api/v1/templates/{template.uuid}/copy/"


def test_copy_adds_the_zone_and_a_copy_to_download(api, register, zone, zone_b):
    template = register()

    response = api.post(copy_url(template), {"zones": [str(zone_b.uuid)]}, format="json")

    assert response.status_code == 202, response.data
    assert sorted(response.data["zones"]) == sorted([str(zone.uuid), str(zone_b.uuid)])
    new = TemplateStoreRef.objects.get(template=template, store__zone=zone_b)
    assert new.download_state == "NOT_DOWNLOADED"
    assert len(response.data["copies"]) == 2


@pytest.mark.parametrize(
    ("zones", "rule"),
    [
        ([], "This list may not be empty"),
        (["00000000-0000-0000-0000-000000000000"], "unknown zone id"),
        ("same", "already in each of these zones"),
    ],
)
def test_bad_copies_are_400_naming_zones_and_write_nothing(api, register, zone, zones, rule):
    template = register()
    if zones == "same":
        zones = [str(zone.uuid)]

    response = api.post(copy_url(template), {"zones": zones}, format="json")

    assert response.status_code == 400
    assert rule in str(response.data["zones"])
    assert TemplateStoreRef.objects.filter(template=template).count() == 1


def test_another_accounts_template_is_404_and_not_copied(other_api, register, zone_b):
    template = register(is_public=True)

    response = other_api.post(copy_url(template), {"zones": [str(zone_b.uuid)]}, format="json")

    assert response.status_code == 404
    assert not template.zones.filter(pk=zone_b.pk).exists()


def test_a_deleted_template_cannot_be_copied(api, register, zone_b):
    template = register()
    api.delete(f"/api/v1/templates/{template.uuid}/")

    response = api.post(copy_url(template), {"zones": [str(zone_b.uuid)]}, format="json")

    assert response.status_code == 409
