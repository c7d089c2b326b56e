"""prepareTemplate (seed 001): pools must be in the template's zones; bad input names the field."""

import pytest

from agents_app.agent import heartbeat
from agents_app.models import PrimaryPool, TemplatePoolRef
from agents_app.pool_copies import pool_copy_set_pinned, template_prepare
from templates_app.errors import InvalidInput
from tests.templates_app.factories import ZoneFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def other_zone_pool():
    zone = ZoneFactory(name="zone-far")
    host = heartbeat.host_register(name="kvm-far", zone=zone, libvirt_uri="test:///default")
    pool = PrimaryPool.objects.create(zone=zone, name="far", libvirt_pool_name="far", path="/x")
    pool.hosts.add(host)
    return pool


def test_a_pool_in_a_zone_the_template_is_not_in_is_refused(register, admin_user, other_zone_pool):
    template = register()
    with pytest.raises(InvalidInput, match="not available in zone 'zone-far'") as refused:
        template_prepare(template_id=template.pk, pool_ids=[other_zone_pool.pk], actor=admin_user)
    assert refused.value.field == "pools"
    assert not TemplatePoolRef.objects.exists()


def test_bad_input_names_the_field(register, admin_user):
    template = register()
    with pytest.raises(InvalidInput) as refused:
        template_prepare(template_id=template.pk, actor=admin_user)
    assert refused.value.field == "pools"
    with pytest.raises(InvalidInput) as refused:
        template_prepare(template_id=template.pk, pool_ids=[], actor=admin_user)
    assert refused.value.field == "pools"


def test_unpinning_a_copy_that_does_not_exist_creates_nothing(
    register, admin_user, other_zone_pool
):
    template = register()
    with pytest.raises(InvalidInput, match="no copy on this pool"):
        pool_copy_set_pinned(
            template_id=template.pk, pool_id=other_zone_pool.pk, pinned=False, actor=admin_user
        )
    assert not TemplatePoolRef.objects.exists()
